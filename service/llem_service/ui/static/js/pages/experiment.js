// One experiment: what it measured, how far to trust it, and where it came from.

import { api, follow, TERMINAL } from "../api.js";
import { forget, powerChart, MEASURED } from "../charts.js";
import { clear, facts, h, message, section, table } from "../dom.js";
import { estimate, whyAdjustedNull, whyNotMeasured, whyNull } from "../figures.js";
import { bytes, num, percent, seconds, shortId, unit, when } from "../format.js";
import { parseTimeline } from "../timeseries.js";
import { acquisitionSection, placementSection } from "./acquisition.js";
import { uncertaintyBudget } from "./budget.js";
import { baselinesSection, energySection } from "./energy.js";
import { progressCell, runAgain, statusBadge } from "./jobs.js";
import { requestsSection } from "./requests.js";

const EXTRAS = [
  ["temperature_c", "Temperature"],
  ["sm_clock_mhz", "SM clock"],
  ["utilization_pct", "Utilisation"],
];

function energyFacts(result) {
  const e = result.energy;
  if (!e) return [["Energy", h("span", { class: "unpublished" }, "not measured", h("span", { class: "why" }, whyNotMeasured(result)))]];
  const h_ = e.host;
  const host = h_ && h_.available ? ["Host CPU + DRAM (RAPL, over the same window)", estimate(h_.energy_j, "J", whyNull(result, "Host energy"))] : null;
  return [
    ["Energy (raw)", estimate(e.energy_j, "J", whyNull(result, "The window's energy"))],
    ["Energy (idle baseline subtracted)", estimate(e.adjusted_energy_j, "J", whyAdjustedNull(result, ["Adjusted energy", "The baseline power"]))],
    ["J per output token (raw)", estimate(e.energy_per_output_token_j, "J", whyNull(result, ["J/token", "The window's energy"]))],
    ["J per output token (adjusted)", estimate(e.adjusted_energy_per_output_token_j, "J", whyAdjustedNull(result, ["Adjusted J/token", "Adjusted energy", "The baseline power"]))],
    ["Mean / peak power", `${unit(e.mean_power_w, "W")} / ${unit(e.peak_power_w, "W")}`],
    ["Energy source", `${e.source.replaceAll("_", " ")}; phases split by ${e.phase_split.replaceAll("_", " ")}`],
    host,
  ];
}

function summary(result) {
  const repeats = result.repeats;
  const tps = repeats.tokens_per_second;
  const tpsText = tps.n > 1 && tps.ci95_low !== null
    ? `${num(result.avg_tokens_per_second)} tokens/s (95% CI ${num(tps.ci95_low)}–${num(tps.ci95_high)} over ${tps.n} repeats)`
    : `${num(result.avg_tokens_per_second)} tokens/s`;
  const placement = result.placement;
  return facts([
    ["Model", result.config.model],
    ["Config hash", h("code", {}, result.measurement_config_hash)],
    ["Requests", num(result.n_requests)],
    ["Tokens in / out", `${num(result.input_tokens)} / ${num(result.output_tokens)}`],
    ["Throughput (output)", tpsText],
    ...energyFacts(result),
    ["Measured window", seconds(result.total_inference_time_sec)],
    ["Load / warm-up", `${seconds(result.model_load_time_sec)} / ${seconds(result.warmup_time_sec)} (${result.warmup_batches} batches)`],
    ["Prefill / decode", `${seconds(result.prefill_time_sec)} / ${seconds(result.decode_time_sec)}`],
    ["Peak memory (allocated)", bytes(result.peak_memory_allocated_bytes)],
    ["FLOPs", `${num(result.total_flops, 3)} (${result.flops_method})`],
    placement ? ["Ran on", `${placement.host} (${placement.executor}), ${placement.gpus.length} GPU${placement.gpus.length === 1 ? "" : "s"}; ${placement.overlapping_experiments.length} overlapping experiment${placement.overlapping_experiments.length === 1 ? "" : "s"}`] : null,
    ["Started / finished", `${when(result.started_at)} / ${when(result.finished_at)}`],
  ]);
}

async function timeline(result, jobId) {
  const box = section("Power timeline", "timeline");
  if (!result.timeseries) {
    box.append(message("No power timeline: this experiment measured no energy (its warnings say why)."));
    return box;
  }
  const devices = parseTimeline(await api(`${result.timeseries}?format=csv`));
  const chosen = new Set();
  const chartsBox = h("div", { class: "charts" });
  const toggles = h(
    "fieldset",
    { class: "toggles" },
    h("legend", {}, "Also show"),
    EXTRAS.map(([column, label]) =>
      h(
        "label",
        {},
        h("input", {
          type: "checkbox",
          name: column,
          onchange: (event) => {
            if (event.target.checked) chosen.add(column);
            else chosen.delete(column);
            draw();
          },
        }),
        ` ${label}`,
      ),
    ),
  );
  const seen = new Set(Object.values(devices).flatMap((d) => d.phase));
  const legend = h(
    "ul",
    { class: "legend", "aria-label": "Phases shaded on the timeline" },
    [...seen].map((phase) => h("li", {}, h("span", { class: "swatch", dataset: { phase } }), phase.replaceAll("_", " "))),
    h("li", {}, h("span", { class: "swatch window" }), "measured window (dashed)"),
  );
  function draw() {
    forget(`power:${jobId}`);
    clear(chartsBox);
    for (const [uuid, rows] of Object.entries(devices)) {
      const name = (result.environment.gpus.find((g) => g.uuid === uuid) || {}).name;
      const measured = rows.phase.filter((p) => MEASURED.has(p)).length;
      const figure = h("figure", { class: "chart", dataset: { device: uuid } });
      chartsBox.append(figure);
      powerChart(figure, `power:${jobId}:${uuid}`, rows, [...chosen]);
      figure.append(
        h("figcaption", {}, `${name || "GPU"} ${uuid}: ${rows.t_s.length} samples, ${measured} in the measured window. Drag to zoom, double-click to reset.`),
      );
    }
  }
  box.append(toggles, legend, chartsBox);
  // Drawn once the section is in the page, so the charts know their width.
  box.draw = draw;
  return box;
}

function latencyBars(title, stats) {
  if (!stats) return h("div", { class: "dist" }, h("h3", {}, title), message("None: every request generated a single token."));
  const top = stats.max || 1;
  const row = (label, value) => {
    const bar = h("span", { class: "bar" });
    bar.style.width = `${Math.max(0.5, (100 * value) / top)}%`;
    return h("tr", {}, h("th", { scope: "row" }, label), h("td", { class: "bar-cell" }, bar), h("td", { class: "num" }, seconds(value)));
  };
  return h(
    "div",
    { class: "dist" },
    h("h3", {}, `${title} (n = ${stats.n})`),
    h(
      "table",
      { class: "bars" },
      h("caption", {}, `${title}: mean and percentiles`),
      h("tbody", {}, row("mean", stats.mean), row("p50", stats.p50), row("p90", stats.p90), row("p99", stats.p99), row("max", stats.max)),
    ),
  );
}

function latency(result) {
  return section(
    "Latency",
    "latency",
    h("p", { class: "note" }, "Percentiles as the result reports them (per request for time to first token, per decoding step for inter-token latency)."),
    h(
      "div",
      { class: "grid" },
      latencyBars("Time to first token", result.time_to_first_token_sec),
      latencyBars("Inter-token latency", result.inter_token_latency_sec),
      latencyBars("Batch latency", result.batch_latency_sec),
    ),
  );
}

function stopText(r) {
  const n = r.per_repeat.length;
  if (r.stop_reason === "fixed") return `${n} repeat${n === 1 ? "" : "s"}, as asked (repeats was a number).`;
  const figure = r.stop_statistic ? r.stop_statistic.replaceAll("_", " ") : "the figure";
  const reached = r.achieved_ci_rel === null ? "" : `: the 95% CI's half-width reached ${percent(r.achieved_ci_rel)} of the mean`;
  return r.stop_reason === "target_reached"
    ? `Stopped after ${n} repeats when ${figure} met its target${reached}.`
    : `Stopped at repeats.max (${n}) before ${figure} met its target${reached}.`;
}

function repeatsSection(result) {
  const r = result.repeats;
  const metered = result.energy !== null;
  const figure = (e) => (metered ? estimate(e, "J", "this repeat's figure could not be bounded") : "not measured");
  return section(
    "Repeats",
    "repeats",
    h("p", { dataset: { stop: r.stop_reason } }, stopText(r)),
    table(
      "Each pass of the measured workload",
      ["Repeat", "Duration", "Output tokens", "Tokens/s", "Energy (raw)", "Energy (adjusted)", "J/token (raw)", "J/token (adjusted)"],
      r.per_repeat.map((p) => [
        p.index + 1,
        seconds(p.duration_s),
        num(p.output_tokens),
        num(p.tokens_per_second),
        figure(p.energy_j),
        metered && !result.energy.baselines.length ? "no baseline" : figure(p.adjusted_energy_j),
        figure(p.energy_per_output_token_j),
        metered && !result.energy.baselines.length ? "no baseline" : figure(p.adjusted_energy_per_output_token_j),
      ]),
      { id: "repeats-table" },
    ),
  );
}

function warningsSection(result) {
  const box = section("Warnings", "warnings");
  if (!result.warnings.length) {
    box.append(message("None: nothing weakened these figures."));
    return box;
  }
  box.append(
    h(
      "ul",
      { class: "warnings" },
      result.warnings.map((w) => h("li", { dataset: { code: w.code } }, h("code", {}, w.code), " ", w.message)),
    ),
  );
  return box;
}

function provenance(result) {
  const env = result.environment;
  return section(
    "Provenance",
    "provenance",
    facts([
      ["Config hash", h("code", {}, result.measurement_config_hash)],
      ["llem", env.llem_version],
      ["Backend", `${env.backend} (${Object.entries(env.backend_versions).map(([k, v]) => `${k} ${v}`).join(", ") || "–"})`],
      ["Python", env.python_version],
      ["Platform", env.platform],
      ["Host", env.hostname],
      ["Container image", env.container_image],
      ["Energy meter", env.energy_meter],
      ["Driver / NVML / CUDA", `${env.driver_version || "–"} / ${env.nvml_version || "–"} / ${env.cuda_driver_version || "–"}`],
    ]),
    env.gpus.length
      ? table(
          "Metered GPUs",
          ["UUID", "Name", "NVML index", "Memory", "Power limit", "Persistence", "MIG mode", "Processes at start"],
          env.gpus.map((g) => [g.uuid, g.name, g.nvml_index, bytes(g.memory_total_bytes), unit(g.power_limit_w, "W"), g.persistence_mode === null ? "–" : g.persistence_mode ? "on" : "off", (env.devices.find((d) => d.uuid === g.uuid) || {}).mig_mode || "–", g.compute_processes.map((p) => p.pid).join(", ") || "none"]),
        )
      : null,
    h("details", {}, h("summary", {}, "Effective config (JSON)"), h("pre", { class: "config" }, JSON.stringify(result.config, null, 2))),
  );
}

function downloads(result, jobId) {
  const links = [h("a", { href: `/v1/experiments/${jobId}/result`, download: `${jobId}.result.json` }, "Result (JSON)")];
  if (result.timeseries) {
    links.push(
      h("a", { href: result.timeseries, download: `${jobId}.timeseries.parquet` }, "Power timeline (Parquet)"),
      h("a", { href: `${result.timeseries}?format=csv`, download: `${jobId}.timeseries.csv` }, "Power timeline (CSV)"),
    );
  }
  return section("Downloads", "downloads", h("ul", { class: "downloads" }, links.map((a) => h("li", {}, a))));
}

export default async function experimentPage(main, { params, navigate, say }) {
  const [jobId] = params;
  let closeStream = () => {};
  const job = await api(`/v1/experiments/${jobId}`);
  const heading = h("h1", { tabindex: "-1" }, job.name || job.model, " ", h("small", { class: "mono" }, shortId(job.id)));
  const statusLine = h("p", { class: "status-line" });
  const again = h("button", { type: "button", onclick: () => runAgain(jobId, navigate).catch((e) => say(`Could not submit: ${e.message}`, "error")) }, "Run again");
  const head = h("div", { class: "page-head" }, heading, statusLine, h("div", { class: "actions" }, again));
  clear(main).append(head);

  function showStatus(current) {
    clear(statusLine).append(statusBadge(current.status), " ", progressCell(current), ` submitted ${when(current.created_at)}`);
    main.dataset.status = current.status;
  }
  showStatus(job);

  async function showResult() {
    const result = await api(`/v1/experiments/${jobId}/result`);
    const sections = [
      section("Summary", "summary", summary(result)),
      await timeline(result, jobId),
      latency(result),
      energySection(result),
      uncertaintyBudget(result),
      requestsSection(result, jobId),
      baselinesSection(result),
      repeatsSection(result),
      acquisitionSection(result),
      placementSection(result),
      warningsSection(result),
      provenance(result),
      downloads(result, jobId),
    ].filter(Boolean);
    // The in-page links: one per section this result has.
    const nav = h(
      "nav",
      { class: "toc", "aria-label": "Sections" },
      sections.map((s) => h("a", { href: `#${s.id}` }, s.querySelector("h2").textContent)),
    );
    main.append(nav, ...sections);
    for (const s of sections) if (s.draw) s.draw();
  }

  if (job.status === "succeeded") {
    await showResult();
  } else if (job.error) {
    main.append(section("Why it failed", "error", message(`${job.error.title}: ${job.error.detail}`, "error")));
  } else if (!TERMINAL.has(job.status)) {
    const live = h("p", { class: "note" }, "Live: this page updates as the job moves.");
    main.append(live);
    closeStream = follow(
      `/v1/experiments/${jobId}/events`,
      "job",
      async (update) => {
        showStatus(update);
        if (update.status === "succeeded") {
          live.remove();
          await showResult();
        } else if (update.error) {
          live.remove();
          main.append(section("Why it failed", "error", message(`${update.error.title}: ${update.error.detail}`, "error")));
        }
      },
      (update) => TERMINAL.has(update.status),
    );
  }
  return () => {
    closeStream();
    forget(`power:${jobId}`);
    forget(`per-request:${jobId}`);
  };
}
