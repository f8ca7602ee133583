// One experiment: what it measured, how far to trust it, and where it came from.

import { api, follow, TERMINAL } from "../api.js";
import { barChart, forget, powerChart, MEASURED } from "../charts.js";
import { clear, facts, h, message, section, table } from "../dom.js";
import { bytes, num, percent, plusMinus, seconds, shortId, unit, when } from "../format.js";
import { parseTimeline } from "../timeseries.js";
import { progressCell, runAgain, statusBadge } from "./jobs.js";
import { uncertaintyBudget } from "./budget.js";

const EXTRAS = [
  ["temperature_c", "Temperature"],
  ["sm_clock_mhz", "SM clock"],
  ["utilization_pct", "Utilisation"],
];

function summary(result) {
  const e = result.energy;
  const repeats = result.repeats;
  const tps = repeats.tokens_per_second;
  const tpsText = tps.n > 1 && tps.ci95_low !== null
    ? `${num(result.avg_tokens_per_second)} tokens/s (95% CI ${num(tps.ci95_low)}–${num(tps.ci95_high)} over ${tps.n} repeats)`
    : `${num(result.avg_tokens_per_second)} tokens/s`;
  return facts([
    ["Model", result.config.model],
    ["Config hash", h("code", {}, result.measurement_config_hash)],
    ["Requests", num(result.n_requests)],
    ["Tokens in / out", `${num(result.input_tokens)} / ${num(result.output_tokens)}`],
    ["Throughput (output)", tpsText],
    ["Energy (raw)", e ? plusMinus(e.energy_j, e.energy_uncertainty_j, "J") : "not measured"],
    ["Energy (idle baseline subtracted)", e ? plusMinus(e.adjusted_energy_j, e.adjusted_energy_uncertainty_j, "J") : "–"],
    ["Energy per output token", e ? `${unit(e.energy_per_output_token_j, "J")} raw, ${unit(e.adjusted_energy_per_output_token_j, "J")} adjusted` : "–"],
    ["Mean / peak power", e ? `${unit(e.mean_power_w, "W")} / ${unit(e.peak_power_w, "W")}` : "–"],
    ["Energy source", e ? e.source.replaceAll("_", " ") : "–"],
    ["Measured window", seconds(result.total_inference_time_sec)],
    ["Load / warm-up", `${seconds(result.model_load_time_sec)} / ${seconds(result.warmup_time_sec)} (${result.warmup_batches} batches)`],
    ["Prefill / decode", `${seconds(result.prefill_time_sec)} / ${seconds(result.decode_time_sec)}`],
    ["Peak memory (allocated)", bytes(result.peak_memory_allocated_bytes)],
    ["FLOPs", `${num(result.total_flops, 3)} (${result.flops_method})`],
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

function energySection(result, jobId) {
  const e = result.energy;
  const box = section("Energy", "energy");
  if (!e) {
    box.append(message("Energy was not measured on this run; the warnings below say why."));
    return box;
  }
  const total = e.phases.reduce((s, p) => s + p.energy_j, 0) || 1;
  box.append(
    table(
      "Energy by phase (summed over the metered GPUs)",
      ["Phase", "Duration", "Energy", "Share", "How"],
      e.phases.map((p) => [p.phase.replaceAll("_", " "), seconds(p.duration_s), plusMinus(p.energy_j, p.energy_uncertainty_j, "J"), percent(p.energy_j / total), p.method === "counter" ? "energy counter at the phase's edges" : "window energy shared by integrated power"]),
    ),
    table(
      "Per GPU over the measured window",
      ["GPU", "Source", "Energy", "Adjusted", "Integrated samples", "Counter vs samples", "Mean / peak power"],
      e.devices.map((d) => [
        `${d.name} ${d.device_uuid}`,
        d.source.replaceAll("_", " "),
        plusMinus(d.energy_j, d.energy_uncertainty_j, "J"),
        unit(d.adjusted_energy_j, "J"),
        unit(d.integrated_energy_j, "J"),
        d.counter_vs_integral_rel_diff === null ? "–" : percent(d.counter_vs_integral_rel_diff),
        `${unit(d.mean_power_w, "W")} / ${unit(d.peak_power_w, "W")}`,
      ]),
    ),
  );
  const perRequest = e.per_request_energy_j;
  const sorted = [...perRequest].sort((a, b) => a - b);
  const figure = h("figure", { class: "chart", id: "per-request-chart" });
  box.append(
    h("h3", {}, "Per-request energy"),
    h("p", { class: "note" }, `Steady-state J/token (decode energy over decode tokens, ${e.per_request_basis}) × each request's output tokens. ${perRequest.length} requests: min ${unit(sorted[0], "J")}, median ${unit(sorted[Math.floor(sorted.length / 2)], "J")}, max ${unit(sorted[sorted.length - 1], "J")}.`),
    figure,
  );
  box.draw = () => barChart(figure, `per-request:${jobId}`, perRequest.map((_, i) => i + 1), perRequest, { xLabel: "request", yLabel: "energy", unit: "J" });
  return box;
}

function repeatsSection(result) {
  const r = result.repeats;
  return section(
    "Repeats",
    "repeats",
    table(
      "Each pass of the measured workload",
      ["Repeat", "Duration", "Output tokens", "Tokens/s", "Energy", "J/token (raw)", "J/token (adjusted)"],
      r.per_repeat.map((p) => [p.index + 1, seconds(p.duration_s), num(p.output_tokens), num(p.tokens_per_second), unit(p.energy_j, "J"), unit(p.energy_per_output_token_j, "J"), unit(p.adjusted_energy_per_output_token_j, "J")]),
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
          ["UUID", "Name", "NVML index", "Memory", "Power limit", "Persistence", "Processes at start"],
          env.gpus.map((g) => [g.uuid, g.name, g.nvml_index, bytes(g.memory_total_bytes), unit(g.power_limit_w, "W"), g.persistence_mode === null ? "–" : g.persistence_mode ? "on" : "off", g.compute_processes.map((p) => p.pid).join(", ") || "none"]),
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
    const nav = h(
      "nav",
      { class: "toc", "aria-label": "Sections" },
      ["Summary:summary", "Power timeline:timeline", "Latency:latency", "Energy:energy", "Uncertainty:uncertainty", "Repeats:repeats", "Warnings:warnings", "Provenance:provenance", "Downloads:downloads"].map((s) => {
        const [label, id] = s.split(":");
        return h("a", { href: `#${id}` }, label);
      }),
    );
    const sections = [
      section("Summary", "summary", summary(result)),
      await timeline(result, jobId),
      latency(result),
      energySection(result, jobId),
      uncertaintyBudget(result),
      repeatsSection(result),
      warningsSection(result),
      provenance(result),
      downloads(result, jobId),
    ];
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
