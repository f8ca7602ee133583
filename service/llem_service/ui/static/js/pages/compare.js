// Compare: two or more experiments side by side, each against the first. A figure differs
// when the values are not equal; it differs significantly when the gap is larger than the
// figures' stated uncertainties combined (energy) - the table says which.

import { api } from "../api.js";
import { clear, h, message } from "../dom.js";
import { num, percent, shortId } from "../format.js";

const METRICS = [
  ["Output tokens/s", (r) => r.avg_tokens_per_second, null, "higher"],
  ["Requests/s", (r) => r.requests_per_second, null, "higher"],
  ["Energy (J)", (r) => r.energy?.energy_j, (r) => r.energy?.energy_uncertainty_j, "lower"],
  ["Adjusted energy (J)", (r) => r.energy?.adjusted_energy_j, (r) => r.energy?.adjusted_energy_uncertainty_j, "lower"],
  ["J per output token", (r) => r.energy?.energy_per_output_token_j, (r) => (r.energy && r.output_tokens ? r.energy.energy_uncertainty_j / r.output_tokens : null), "lower"],
  ["Adjusted J per output token", (r) => r.energy?.adjusted_energy_per_output_token_j, (r) => (r.energy && r.output_tokens && r.energy.adjusted_energy_uncertainty_j !== null ? r.energy.adjusted_energy_uncertainty_j / r.output_tokens : null), "lower"],
  ["Mean power (W)", (r) => r.energy?.mean_power_w, null, null],
  ["TTFT p50 (s)", (r) => r.time_to_first_token_sec.p50, null, "lower"],
  ["TTFT p90 (s)", (r) => r.time_to_first_token_sec.p90, null, "lower"],
  ["ITL p50 (s)", (r) => r.inter_token_latency_sec?.p50, null, "lower"],
  ["ITL p90 (s)", (r) => r.inter_token_latency_sec?.p90, null, "lower"],
  ["Measured window (s)", (r) => r.total_inference_time_sec, null, null],
  ["Output tokens", (r) => r.output_tokens, null, null],
  ["Peak memory (bytes)", (r) => r.peak_memory_allocated_bytes, null, "lower"],
  ["Warnings", (r) => r.warnings.length, null, "lower"],
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

function metricCell(value, error, reference, refError, better) {
  if (value === null || value === undefined) return { text: "–", cls: "" };
  let text = num(value);
  if (error !== null && error !== undefined) text += ` ± ${num(error, 2)}`;
  if (reference === null || reference === undefined || value === reference) return { text, cls: "" };
  const rel = reference !== 0 ? (value - reference) / Math.abs(reference) : null;
  if (rel !== null) text += ` (${rel > 0 ? "+" : ""}${percent(rel, 3)})`;
  let cls = "differs";
  if (error !== null && error !== undefined && refError !== null && refError !== undefined) {
    const significant = Math.abs(value - reference) > Math.hypot(error, refError);
    cls = significant ? "differs significant" : "differs within";
    if (!significant) text += " within uncertainty";
  }
  if (better && rel !== null) {
    const improved = better === "higher" ? value > reference : value < reference;
    cls += improved ? " better" : " worse";
  }
  return { text, cls };
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
  const [ref] = results;
  const onlyDiff = h("input", { type: "checkbox", id: "only-differences" });
  const head = (first) => h("tr", {}, h("th", { scope: "col" }, first), results.map((r, i) =>
    h("th", { scope: "col" }, h("a", { href: `/ui/experiments/${ids[i]}` }, r.config.name || r.config.model), h("br"), h("small", { class: "mono" }, `${shortId(ids[i])}${i === 0 ? " (reference)" : ""}`)),
  ));
  const body = h("tbody", {});
  for (const [label, get, getError, better] of METRICS) {
    const refValue = get(ref) ?? null;
    const refError = getError ? getError(ref) : null;
    const cells = results.map((r, i) => {
      const value = get(r) ?? null;
      const cell = i === 0 ? { text: value === null ? "–" : num(value), cls: "" } : metricCell(value, getError ? getError(r) : null, refValue, refError, better);
      if (i === 0 && getError && refError !== null && value !== null) cell.text += ` ± ${num(refError, 2)}`;
      return cell;
    });
    const differs = cells.some((c) => c.cls.includes("differs"));
    body.append(h("tr", { class: differs ? "row-differs" : "row-same" }, h("th", { scope: "row" }, label), cells.map((c) => h("td", { class: `num ${c.cls}` }, c.text))));
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
    h("p", { class: "note" }, "Highlighted: differs from the reference; bold: by more than the stated uncertainties combined; green/red: better/worse."),
    figures,
    configTable,
  );
  return () => main.classList.remove("only-differences");
}
