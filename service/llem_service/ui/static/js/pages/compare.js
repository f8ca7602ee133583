// Compare: two or more experiments side by side, each against the first. A figure differs
// when the values are not equal. An energy figure is an Estimate: it differs significantly
// when the gap is larger than the two figures' total uncertainties (k = 2) in quadrature, and
// "within uncertainty" otherwise; the table says which. A null figure is "not published".

import { api } from "../api.js";
import { clear, h, message } from "../dom.js";
import { estimateParts, estimateText } from "../figures.js";
import { num, percent, shortId } from "../format.js";

const requests = (r) => r.energy?.requests;
const hostEnergy = (r) => {
  const host = r.energy?.host;
  return host && host.available ? host.energy_j : null;
};

// [label, figure of a result, kind, better]. Kinds: "estimate" (an Estimate, or null: not
// published), "host" (an Estimate, or null: not measured, or too uncertain to publish), "number".
const METRICS = [
  ["Output tokens/s", (r) => r.avg_tokens_per_second, "number", "higher"],
  ["Requests/s", (r) => r.requests_per_second, "number", "higher"],
  ["Energy (J)", (r) => r.energy?.energy_j, "estimate", "lower"],
  ["Adjusted energy (J)", (r) => r.energy?.adjusted_energy_j, "estimate", "lower"],
  ["J per output token", (r) => r.energy?.energy_per_output_token_j, "estimate", "lower"],
  ["Adjusted J per output token", (r) => r.energy?.adjusted_energy_per_output_token_j, "estimate", "lower"],
  ["Idle baseline power (W)", (r) => r.energy?.baseline_power_w, "estimate", null],
  ["Per-request J/token p50", (r) => requests(r)?.energy_per_output_token_j.p50, "estimate", "lower"],
  ["Per-request J/token p90", (r) => requests(r)?.energy_per_output_token_j.p90, "estimate", "lower"],
  ["Adjusted per-request J/token p50", (r) => requests(r)?.adjusted_energy_per_output_token_j?.p50, "estimate", "lower"],
  ["Steady-state decode J/token", (r) => requests(r)?.steady_state?.energy_per_output_token_j, "estimate", "lower"],
  ["Host CPU + DRAM energy (J)", hostEnergy, "host", "lower"],
  ["Mean power (W)", (r) => r.energy?.mean_power_w, "number", null],
  ["TTFT p50 (s)", (r) => r.time_to_first_token_sec.p50, "number", "lower"],
  ["TTFT p90 (s)", (r) => r.time_to_first_token_sec.p90, "number", "lower"],
  ["ITL p50 (s)", (r) => r.inter_token_latency_sec?.p50, "number", "lower"],
  ["ITL p90 (s)", (r) => r.inter_token_latency_sec?.p90, "number", "lower"],
  ["Measured window (s)", (r) => r.total_inference_time_sec, "number", null],
  ["Output tokens", (r) => r.output_tokens, "number", null],
  ["Peak memory (bytes)", (r) => r.peak_memory_allocated_bytes, "number", "lower"],
  ["Overlapping experiments", (r) => r.placement?.overlapping_experiments.length, "number", "lower"],
  ["Warnings", (r) => r.warnings.length, "number", "lower"],
];

/** {"a.b.c": value} of a nested object, for a config diff. */
export function flatten(value, prefix = "", out = {}) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    for (const [k, v] of Object.entries(value)) flatten(v, prefix ? `${prefix}.${k}` : k, out);
  } else {
    out[prefix] = JSON.stringify(value);
  }
  return out;
}

/** What a result shows for a figure: text, a title (an Estimate's parts) and its numbers. */
function shown(figure, kind, metered) {
  if (figure === null || figure === undefined) {
    if (kind === "number") return { text: "–", value: null, total: null };
    if (kind === "host" || !metered) return { text: "not measured", value: null, total: null };
    return { text: "not published", value: null, total: null, unpublished: true, title: "null in this result: its warnings say why" };
  }
  if (kind === "number") return { text: num(figure), value: figure, total: null };
  const text = figure.random === null ? `${num(figure.value)} ± ${num(figure.total, 2)}` : estimateText(figure, "");
  return { text, value: figure.value, total: figure.total, title: figure.random === null ? null : estimateParts(figure, "") };
}

/** A cell against the reference: its difference, whether significant, better or worse. */
function metricCell(cell, ref, better) {
  const out = { ...cell, cls: cell.unpublished ? "unpublished" : "" };
  if (cell.value === null || ref.value === null || cell.value === ref.value) return out;
  const rel = ref.value !== 0 ? (cell.value - ref.value) / Math.abs(ref.value) : null;
  if (rel !== null) out.text += ` (${rel > 0 ? "+" : ""}${percent(rel, 3)})`;
  out.cls = "differs";
  if (cell.total !== null && ref.total !== null) {
    const significant = Math.abs(cell.value - ref.value) > Math.hypot(cell.total, ref.total);
    out.cls = significant ? "differs significant" : "differs within";
    if (!significant) out.text += " within uncertainty";
  }
  if (better && rel !== null) {
    const improved = better === "higher" ? cell.value > ref.value : cell.value < ref.value;
    out.cls += improved ? " better" : " worse";
  }
  return out;
}

async function picker(main, navigate) {
  const page = await api("/v1/experiments?status=succeeded&limit=100");
  const chosen = new Set();
  const go = h("button", { type: "submit", disabled: true }, "Compare");
  const form = h(
    "form",
    { class: "picker", onsubmit: (event) => { event.preventDefault(); navigate(`/ui/compare?ids=${[...chosen].join(",")}`); } },
    h(
      "fieldset",
      {},
      h("legend", {}, "Pick two or more succeeded experiments (the first you pick is the reference)"),
      page.items.length
        ? page.items.map((job) =>
            h(
              "label",
              { class: "pick" },
              h("input", {
                type: "checkbox",
                value: job.id,
                onchange: (event) => {
                  if (event.target.checked) chosen.add(job.id);
                  else chosen.delete(job.id);
                  go.disabled = chosen.size < 2;
                },
              }),
              ` ${job.name || job.model} `,
              h("span", { class: "mono" }, shortId(job.id)),
            ),
          )
        : message("No succeeded experiments yet."),
    ),
    go,
  );
  main.append(form);
}

export default async function comparePage(main, { navigate, query }) {
  const ids = (query.get("ids") || "").split(",").filter(Boolean);
  clear(main).append(h("h1", { tabindex: "-1" }, "Compare experiments"));
  if (ids.length < 2) {
    await picker(main, navigate);
    return () => {};
  }
  const results = await Promise.all(ids.map((id) => api(`/v1/experiments/${id}/result`)));
  const onlyDiff = h("input", { type: "checkbox", id: "only-differences" });
  const head = (first) => h("tr", {}, h("th", { scope: "col" }, first), results.map((r, i) =>
    h("th", { scope: "col" }, h("a", { href: `/ui/experiments/${ids[i]}` }, r.config.name || r.config.model), h("br"), h("small", { class: "mono" }, `${shortId(ids[i])}${i === 0 ? " (reference)" : ""}`)),
  ));
  const body = h("tbody", {});
  for (const [label, get, kind, better] of METRICS) {
    const values = results.map((r) => shown(get(r), kind, r.energy !== null));
    const cells = values.map((cell, i) => (i === 0 ? { ...cell, cls: cell.unpublished ? "unpublished" : "" } : metricCell(cell, values[0], better)));
    const differs = cells.some((c) => c.cls.includes("differs")) || values.some((c) => c.text !== values[0].text && c.value === null);
    body.append(
      h(
        "tr",
        { class: differs ? "row-differs" : "row-same", dataset: { metric: label } },
        h("th", { scope: "row" }, label),
        cells.map((c) => h("td", { class: `num ${c.cls}`.trim(), title: c.title || null }, c.text)),
      ),
    );
  }
  const configs = results.map((r) => flatten(r.config));
  const keys = [...new Set(configs.flatMap((c) => Object.keys(c)))].sort();
  const configBody = h("tbody", {});
  for (const key of keys) {
    const values = configs.map((c) => c[key] ?? "–");
    const differs = values.some((v) => v !== values[0]);
    configBody.append(h("tr", { class: differs ? "row-differs" : "row-same" }, h("th", { scope: "row" }, h("code", {}, key)), values.map((v, i) => h("td", { class: i > 0 && v !== values[0] ? "differs" : "" }, v))));
  }
  const figures = h("table", { class: "compare", id: "compare-figures" }, h("caption", {}, "Figures (each against the reference)"), h("thead", {}, head("Figure")), body);
  const configTable = h("table", { class: "compare", id: "compare-config" }, h("caption", {}, "Config"), h("thead", {}, head("Field")), configBody);
  onlyDiff.addEventListener("change", () => {
    main.classList.toggle("only-differences", onlyDiff.checked);
  });
  main.append(
    h("div", { class: "toolbar" }, h("label", { for: "only-differences" }, onlyDiff, " Show only what differs")),
    h("p", { class: "note" }, "Highlighted: differs from the reference; bold: by more than the two figures' total uncertainties (k = 2) in quadrature, else \"within uncertainty\"; green/red: better/worse. Energy figures are value ± total; hover one for its random and systematic parts."),
    figures,
    configTable,
  );
  return () => main.classList.remove("only-differences");
}
