// An experiment's energy: the headline figures, the phases, each GPU, the idle baseline and
// the host's CPU and DRAM. Every figure is an Estimate shown as value ± total (see
// figures.js), or "not published" with the warning that says why.

import { facts, h, message, section, table } from "../dom.js";
import { num, percent, seconds, unit, when } from "../format.js";
import { estimate, unpublished, whyAdjustedNull, whyNotMeasured, whyNull } from "../figures.js";

const PHASE_METHODS = {
  counter: "energy counter read at the phase's edges",
  prefill_passes: "prefill-only passes after the window (counter), per pass × repeats",
  window_minus_prefill: "the window's counter energy − prefill − the gaps",
  gap_power: "time between batches × the sampled power there",
  timeline_share: "the window's counter energy shared by the integrated power samples",
};
const WINDOW_PHASES = new Set(["prefill", "decode", "between_batches"]);

/** A table of [label, Estimate|null, unit, why] rows: value ± total, then its two parts. */
export function estimatesTable(caption, rows, attrs = {}) {
  return h(
    "table",
    { class: "estimates", ...attrs },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, ["Figure", "Value ± total", "Random", "Systematic"].map((c) => h("th", { scope: "col" }, c)))),
    h(
      "tbody",
      {},
      rows.filter(Boolean).map(([label, e, u, why, key]) =>
        h(
          "tr",
          { dataset: { figure: key || label } },
          h("th", { scope: "row" }, label),
          h("td", { class: "num" }, estimate(e, u, why)),
          h("td", { class: "num" }, e ? `±${num(e.random, 3)} ${u}` : "–"),
          h("td", { class: "num" }, e ? `±${num(e.systematic, 3)} ${u}` : "–"),
        ),
      ),
    ),
  );
}

function headline(result) {
  const e = result.energy;
  const noTokens = result.output_tokens === 0 ? "no output tokens" : null;
  return estimatesTable(
    "The measured window (every repeat), summed over the metered GPUs",
    [
      ["Raw energy", e.energy_j, "J", whyNull(result, "The window's energy"), "energy_j"],
      ["Adjusted energy (idle subtracted)", e.adjusted_energy_j, "J", whyAdjustedNull(result, ["Adjusted energy", "The baseline power"]), "adjusted_energy_j"],
      ["Idle baseline power", e.baseline_power_w, "W", whyAdjustedNull(result, "The baseline power"), "baseline_power_w"],
      ["J per output token (raw)", e.energy_per_output_token_j, "J", whyNull(result, ["J/token", "The window's energy"], noTokens), "energy_per_output_token_j"],
      ["J per output token (adjusted)", e.adjusted_energy_per_output_token_j, "J", whyAdjustedNull(result, ["Adjusted J/token", "Adjusted energy", "The baseline power"]), "adjusted_energy_per_output_token_j"],
    ],
    { id: "energy-figures" },
  );
}

function phasesTable(result) {
  const e = result.energy;
  const window = e.energy_j ? e.energy_j.value : null;
  return table(
    "Energy by phase (summed over the metered GPUs); load and warm-up lie outside the measured window",
    ["Phase", "Duration", "Energy", "Share of the window", "How"],
    e.phases.map((p) => [
      p.phase.replaceAll("_", " "),
      seconds(p.duration_s),
      estimate(p.energy_j, "J", whyNull(result, `The ${p.phase} phase's energy`)),
      WINDOW_PHASES.has(p.phase) && p.energy_j && window ? percent(p.energy_j.value / window) : "–",
      `${PHASE_METHODS[p.method] || p.method} (${p.method})`,
    ]),
    { id: "phases" },
  );
}

function prefillPasses(result) {
  const e = result.energy;
  const passes = e.prefill_passes;
  if (e.phase_split !== "prefill_passes") {
    return h("p", { class: "note" }, "Phase split: timeline share (no prefill passes ran: energy.phase_split is 'none', or no GPU has an energy counter). Prefill and decode share the window's energy by the integrated power samples.");
  }
  if (!passes) {
    return h("p", { class: "note" }, "Prefill passes: ", unpublished(whyNull(result, ["The prefill passes' energy", "Prefill energy per pass"])));
  }
  return h(
    "div",
    { id: "prefill-passes" },
    h("h3", {}, "Prefill passes"),
    h("p", { class: "note" }, "After the window, the workload's own batches ran again with one output token until the energy counter spanned many updates (as optimum-benchmark measures prefill); decode is the window's energy less prefill and the gaps. Not part of the window."),
    facts([
      ["Passes", `${passes.passes} in ${seconds(passes.duration_s)}`],
      ["Energy, all passes", estimate(passes.energy_j, "J")],
      ["Energy per pass", estimate(passes.energy_per_pass_j, "J")],
      ["Prefill time per pass", `${seconds(passes.prefill_time_per_pass_s)} (inside the window: ${seconds(passes.window_prefill_time_per_repeat_s)} per repeat)`],
    ]),
  );
}

function sensorText(s) {
  const sensed = s.sensed_fraction === null ? "part-time sensing assumed" : `senses ${percent(s.sensed_fraction)} of each counter period`;
  return `${s.generation}: ±${percent(s.gain_rel)} and ±${num(s.offset_w)} W; ${sensed} (${s.source})`;
}

function devicesTable(result) {
  const e = result.energy;
  return table(
    "Per GPU over the measured window",
    ["GPU", "Source", "Power field", "Energy", "Adjusted", "Integrated samples", "Counter vs samples", "Mean / peak power", "Counter period", "Sensor assumed"],
    e.devices.map((d) => [
      [d.name, h("br"), h("code", {}, d.device_uuid)],
      d.source.replaceAll("_", " "),
      d.power_field || "–",
      estimate(d.energy_j, "J", whyNull(result, "A GPU's energy")),
      estimate(d.adjusted_energy_j, "J", whyAdjustedNull(result, "A GPU's adjusted energy")),
      unit(d.integrated_energy_j, "J"),
      d.counter_vs_integral_rel_diff === null ? "–" : percent(d.counter_vs_integral_rel_diff),
      `${unit(d.mean_power_w, "W")} / ${unit(d.peak_power_w, "W")}`,
      d.counter_update_period_s ? seconds(d.counter_update_period_s) : "–",
      sensorText(d.sensor),
    ]),
    { id: "devices" },
  );
}

function hostBlock(result) {
  const host = result.energy.host;
  const box = h("div", { id: "host" }, h("h3", {}, "Host CPU and DRAM (RAPL)"));
  if (!host) return null;
  if (!host.available) {
    box.append(h("p", { class: "note" }, `Not measured: ${host.reason || "no reason given"}.`));
    return box;
  }
  const why = (label) => whyNull(result, label);
  box.append(
    facts([
      ["Energy (packages + DRAM)", estimate(host.energy_j, "J", why("Host energy"))],
      ["CPU packages", estimate(host.cpu_energy_j, "J", why("Host CPU energy"))],
      ["DRAM", host.dram_energy_j === null ? "–" : estimate(host.dram_energy_j, "J", why("Host DRAM energy"))],
      ["Per output token", estimate(host.energy_per_output_token_j, "J", why(["Host energy per output token", "Host energy"]))],
      ["Mean power", unit(host.mean_power_w, "W")],
      ["Window", seconds(host.window_s)],
      ["Method", host.method],
    ]),
    host.domains.length
      ? table(
          "RAPL zones",
          ["Zone", "Kind", "Energy", "Mean power", "Wrap-arounds"],
          host.domains.map((z) => [`${z.name} (${z.zone})`, z.kind, estimate(z.energy_j, "J", why("A RAPL zone's energy")), unit(z.mean_power_w, "W"), z.wraps]),
        )
      : null,
  );
  return box;
}

export function energySection(result) {
  const e = result.energy;
  const box = section("Energy", "energy");
  if (!e) {
    box.append(message(`Energy was not measured on this run. ${whyNotMeasured(result)}`));
    return box;
  }
  box.append(
    h("p", { class: "note" }, "Value ± total, expanded (k = 2, about 95%); hover a figure for its random and systematic parts. A figure the run could not bound is not published, with the warning that says why."),
    headline(result),
    facts([
      ["Mean / peak power", `${unit(e.mean_power_w, "W")} / ${unit(e.peak_power_w, "W")}`],
      ["Source", e.source.replaceAll("_", " ")],
      ["Window", seconds(e.window_s)],
      ["Counter vs integrated samples", e.counter_vs_integral_rel_diff === null ? "–" : `${percent(e.counter_vs_integral_rel_diff)} (warns beyond ±${percent(e.cross_check_threshold)})`],
      ["Phase split", e.phase_split.replaceAll("_", " ")],
    ]),
    h("h3", {}, "Phases"),
    phasesTable(result),
    prefillPasses(result),
    h("h3", {}, "GPUs"),
    devicesTable(result),
    hostBlock(result),
  );
  return box;
}

function baselineFlags(b) {
  const flags = [];
  if (b.reused) flags.push(`reused (taken ${seconds(b.age_s)} before; ±${num(b.reuse_bound_w, 3)} W for the temperature since)`);
  if (b.contaminated) flags.push("contaminated: the GPU was busy (see warnings)");
  if (!b.settled) flags.push("not settled (see warnings)");
  return flags.join("; ") || "clean";
}

/** Idle power measured again after the window: only when asked, and published or not. */
function afterWindow(result, b) {
  if (b.after_power_w) return [estimate(b.after_power_w, "W"), h("br"), `drift ${unit(b.drift_w, "W", 3)}`];
  if (result.config.baseline.when === "before") return "not measured";
  return estimate(null, "W", whyNull(result, "A GPU's idle power after the window"));
}

export function baselinesSection(result) {
  const e = result.energy;
  const box = section("Idle baseline", "baseline");
  if (!e) return null;
  if (!e.baselines.length) {
    box.append(message("No idle baseline was taken (baseline.enabled is false): only raw energy is published."));
    return box;
  }
  box.append(
    h("p", {}, "Summed idle power of the metered GPUs: ", estimate(e.baseline_power_w, "W", whyNull(result, "The baseline power")), ". Adjusted energy subtracts it × the window."),
    table(
      "Idle power per GPU, how it was taken, and how far it may still move",
      ["GPU", "Idle power", "Window", "Settling", "Trend / drift bound", "Temperature", "After the window", "Taken", "State"],
      e.baselines.map((b) => [
        h("code", {}, b.device_uuid),
        estimate(b.power_w, "W", whyNull(result, "A GPU's idle baseline")),
        [seconds(b.duration_s), h("br"), h("small", {}, b.method)],
        `${seconds(b.settle_s)} ${b.settled ? "(settled)" : "(cap reached)"}`,
        `${b.trend_w_per_s === null ? "–" : `${num(b.trend_w_per_s, 3)} W/s`} / ±${num(b.drift_bound_w, 3)} W`,
        b.temperature_c === null ? "–" : `${num(b.temperature_c, 3)} °C${b.temperature_trend_c_per_s === null ? "" : ` (${num(b.temperature_trend_c_per_s, 2)} °C/s)`}`,
        afterWindow(result, b),
        when(b.measured_at),
        baselineFlags(b),
      ]),
      { id: "baselines" },
    ),
  );
  return box;
}
