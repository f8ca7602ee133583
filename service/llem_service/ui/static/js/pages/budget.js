// The uncertainty budget: what the stated error bounds are made of.
//
// The service states one bound per figure (energy_uncertainty_j and friends). Its terms, as
// energy/report.py composes them for a GPU with an energy counter: a counter read may lag by one
// update period at each edge of the window (highest power near the edges x the period), 1 mJ
// per read, and half the disagreement between the counter and the integrated power samples, in
// quadrature. The page recomputes the terms it can from the result's own fields and shows
// what remains as "power just outside the window" (the edge power it cannot see); it never
// changes the stated figure.

import { h, message, section } from "../dom.js";
import { num, percent, plusMinus, unit } from "../format.js";

const DEFAULT_COUNTER_PERIOD_S = 0.1; // energy/trust.py: assumed when the period was not probed
const READ_RESOLUTION_J = 0.002; // 1 mJ per counter read, two reads

function shareBar(share) {
  const bar = h("span", { class: "bar" });
  bar.style.width = `${Math.max(0.5, Math.min(100, share * 100))}%`;
  return h("td", { class: "bar-cell" }, bar, h("span", { class: "visually-hidden" }, percent(share)));
}

function row(what, value_j, stated_j, how) {
  const share = stated_j > 0 ? (value_j * value_j) / (stated_j * stated_j) : 0;
  return h("tr", {}, h("th", { scope: "row" }, what), h("td", { class: "num" }, unit(value_j, "J", 3)), shareBar(share), h("td", {}, how));
}

function deviceRows(device) {
  const stated = device.energy_uncertainty_j;
  if (device.source !== "nvml_energy_counter") {
    return [row(`${device.name}: integrated power`, stated, stated, "(peak power + the power steps between samples) × (sampling interval + the power field's averaging lag)")];
  }
  const period = device.counter_update_period_s ?? DEFAULT_COUNTER_PERIOD_S;
  const top = Math.max(device.peak_power_w ?? 0, device.mean_power_w);
  const edge = top * period;
  const cross = device.integrated_energy_j === null ? 0 : Math.abs(device.integrated_energy_j - device.energy_j) / 2;
  const explained = Math.sqrt(edge * edge + READ_RESOLUTION_J ** 2 + cross * cross);
  const rest = stated > explained ? Math.sqrt(stated * stated - explained * explained) : 0;
  const rows = [
    row(`${device.name}: counter lag at the edges`, edge, stated, `highest power (${unit(top, "W")}) × counter update period (${num(period * 1e3, 3)} ms${device.counter_update_period_s ? "" : ", assumed"})`),
    row(`${device.name}: counter resolution`, READ_RESOLUTION_J, stated, "1 mJ per read"),
    row(`${device.name}: counter vs samples`, cross, stated, "half the difference between the counter and the integrated power samples"),
  ];
  if (rest > 0.01 * stated) {
    rows.push(row(`${device.name}: power near the edges`, rest, stated, "higher power just outside the measured window than inside it (a read there may lag)"));
  }
  return rows;
}

export function uncertaintyBudget(result) {
  const e = result.energy;
  const box = section("Uncertainty", "uncertainty");
  if (!e) {
    box.append(message("No energy was measured, so there is no energy uncertainty to break down."));
    return box;
  }
  const stated = e.energy_uncertainty_j;
  const body = h("tbody", {});
  for (const device of e.devices) body.append(...deviceRows(device));
  body.append(
    h(
      "tr",
      { class: "total" },
      h("th", { scope: "row" }, "Raw energy, stated"),
      h("td", { class: "num" }, unit(stated, "J", 3)),
      h("td", {}, percent(e.energy_j ? stated / e.energy_j : null)),
      h("td", {}, "the terms above in quadrature, GPUs in quadrature"),
    ),
  );
  if (e.adjusted_energy_uncertainty_j !== null && e.baselines.length) {
    const idle = Math.sqrt(e.baselines.reduce((s, b) => s + b.power_uncertainty_w ** 2, 0)) * e.window_s;
    body.append(
      row("Idle baseline", idle, e.adjusted_energy_uncertainty_j, `baseline power uncertainty × window (${num(e.window_s)} s)`),
      h(
        "tr",
        { class: "total" },
        h("th", { scope: "row" }, "Adjusted energy, stated"),
        h("td", { class: "num" }, unit(e.adjusted_energy_uncertainty_j, "J", 3)),
        h("td", {}, percent(e.adjusted_energy_j ? e.adjusted_energy_uncertainty_j / e.adjusted_energy_j : null)),
        h("td", {}, "raw energy's bound and the baseline's, in quadrature"),
      ),
    );
  }
  box.append(
    h("p", { class: "note" }, "Error bounds (not standard deviations). Bars: each term's share of the stated bound's square."),
    h(
      "table",
      { class: "budget" },
      h("caption", {}, "What the stated energy uncertainty is made of"),
      h("thead", {}, h("tr", {}, ["Term", "Size", "Share", "From"].map((c) => h("th", { scope: "col" }, c)))),
      body,
    ),
  );
  const spread = e.adjusted_energy_per_output_token_j !== null ? result.repeats.adjusted_energy_per_output_token_j : result.repeats.energy_per_output_token_j;
  if (spread && spread.n > 1) {
    box.append(h("p", {}, `Across ${spread.n} repeats, J/token ${plusMinus(spread.mean, spread.std, "J")} (sample standard deviation; 95% CI ${num(spread.ci95_low)}–${num(spread.ci95_high)} J).`));
  } else {
    box.append(h("p", { class: "note" }, "One repeat: no run-to-run spread to show (set repeats > 1 for a confidence interval)."));
  }
  return box;
}
