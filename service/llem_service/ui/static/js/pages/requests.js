// Per-request energy, as energy.requests states it: the measured window's energy split among
// its requests (per_step_split: raw adds up to the window's raw energy, adjusted to its
// adjusted energy), the J/token percentiles over the requests, and, labelled as such,
// ML.ENERGY's steady-state figure for comparison (which does not add up).

import { h, section, table } from "../dom.js";
import { requestChart } from "../charts.js";
import { estimate, unpublished, whyAdjustedNull, whyNull } from "../figures.js";

function percentiles(result) {
  const r = result.energy.requests;
  const adjustedWhy = whyAdjustedNull(result, ["Per-request adjusted J/token", "Per-request adjusted energy", "Adjusted energy"]);
  return table(
    "J per output token over the requests (each request's energy / its output tokens)",
    ["Statistic", "Raw", "Adjusted (idle subtracted)"],
    ["mean", "p50", "p90", "p99"].map((name) => [
      name,
      estimate(r.energy_per_output_token_j[name], "J"),
      r.adjusted_energy_per_output_token_j ? estimate(r.adjusted_energy_per_output_token_j[name], "J") : unpublished(adjustedWhy),
    ]),
    { id: "request-percentiles" },
  );
}

function steadyState(result) {
  const r = result.energy.requests;
  const box = h("div", { id: "steady-state" }, h("h3", {}, "Steady-state figure (ML.ENERGY's method, for comparison)"));
  const s = r.steady_state;
  if (!s) {
    const ones = result.output_tokens_per_request.every((n) => n <= 1);
    box.append(h("p", {}, unpublished(ones ? "every request generated one token: there is no decode to take a steady state from" : whyNull(result, ["Steady-state decode J/token", "Steady-state per-request energy"]))));
    return box;
  }
  const values = s.energy_j.map((e) => e.value).sort((a, b) => a - b);
  const at = (q) => s.energy_j.find((e) => e.value === values[Math.min(values.length - 1, Math.floor(q * values.length))]);
  box.append(
    h("p", { class: "note" }, "Decode J/token in the steady state (prefill excluded) × each request's output tokens. It leaves out prefill and the gaps, so it does not add up to the window's energy; the split above does."),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Steady-state decode J/token"),
      h("dd", { dataset: { figure: "steady_state" } }, estimate(s.energy_per_output_token_j, "J")),
      h("dt", {}, "Per request: smallest / median / largest"),
      h("dd", {}, estimate(at(0), "J"), " / ", estimate(at(0.5), "J"), " / ", estimate(at(1), "J")),
    ),
  );
  return box;
}

function everyRequest(result) {
  const r = result.energy.requests;
  const perRepeat = result.config.n_prompts;
  const adjusted = r.adjusted_energy_j;
  const steady = r.steady_state ? r.steady_state.energy_j : null;
  return h(
    "details",
    {},
    h("summary", {}, `Every request (${r.energy_j.length})`),
    table(
      "Each request's energy, in workload order",
      ["Request", "Repeat", "Output tokens", "Raw", "Adjusted", "Steady-state (comparison)"],
      r.energy_j.map((e, i) => [
        i + 1,
        Math.floor(i / perRepeat) + 1,
        result.output_tokens_per_request[i] ?? "–",
        estimate(e, "J"),
        adjusted ? estimate(adjusted[i], "J") : "–",
        steady ? estimate(steady[i], "J") : "–",
      ]),
      { id: "every-request" },
    ),
  );
}

export function requestsSection(result, jobId) {
  const e = result.energy;
  if (!e) return null;
  const box = section("Per-request energy", "requests");
  const r = e.requests;
  if (!r) {
    const noOutput = result.output_tokens === 0 ? "no request generated output" : null;
    box.append(h("p", {}, unpublished(whyNull(result, ["Per-request energy", "Per-request J/token"], noOutput))));
    return box;
  }
  const figure = h("figure", { class: "chart", id: "per-request-chart" });
  box.append(
    h("p", { class: "note" }, `${r.description.replace(/\.$/, "")} (method: ${r.method.replaceAll("_", " ")}).`),
    figure,
    percentiles(result),
    steadyState(result),
    everyRequest(result),
  );
  box.draw = () => {
    requestChart(figure, `per-request:${jobId}`, r.energy_j, r.adjusted_energy_j);
    figure.append(h("figcaption", {}, `${r.energy_j.length} requests: raw energy (bars)${r.adjusted_energy_j ? " and idle-subtracted energy (dots)" : ""}, each with its ± total (k = 2).`));
  };
  return box;
}
