// Energy figures as a result states them. Every energy number is an Estimate
// {value, random, systematic, total}: expanded uncertainties (k = 2, about 95%), the total
// being the random and systematic parts in quadrature. The page shows "value ± total" and
// gives the two parts on hover (a title) and to screen readers (hidden text). A figure the
// run could not bound is null on the wire: the page says "not published" beside the warning
// that says why, never a number.

import { h } from "./dom.js";
import { num } from "./format.js";

/** Fixed decimals that show ``total`` to two significant digits (the value to match). */
function places(total) {
  if (!(total > 0) || !Number.isFinite(total)) return null;
  return Math.min(12, Math.max(0, 1 - Math.floor(Math.log10(total))));
}

function fixed(value, digits) {
  return new Intl.NumberFormat("en", { minimumFractionDigits: digits, maximumFractionDigits: digits }).format(value);
}

/** "151.8 ± 9.3 J": the value rounded where its uncertainty's second digit falls. */
export function estimateText(e, u) {
  const digits = places(e.total);
  let text;
  if (digits === null) text = `${num(e.value)} ± 0`;
  else if (e.total < 1e-6) text = `${e.value.toExponential(2)} ± ${e.total.toExponential(1)}`;
  else text = `${fixed(e.value, digits)} ± ${fixed(e.total, digits)}`;
  return u ? `${text} ${u}` : text;
}

/** "±1.04 J random, ±9.24 J systematic (k = 2, about 95%)". */
export function estimateParts(e, u) {
  const unit_ = u ? ` ${u}` : "";
  return `±${num(e.random, 3)}${unit_} random, ±${num(e.systematic, 3)}${unit_} systematic (k = 2, about 95%)`;
}

/** "not published", with the reason under it (a warning's message, or words). */
export function unpublished(reason) {
  return h("span", { class: "unpublished" }, "not published", reason ? h("span", { class: "why" }, reason) : null);
}

/**
 * An Estimate as an element: value ± total, its parts on hover; or, for null, "not published"
 * and ``reason``. The data attributes carry the numbers as the result has them.
 */
export function estimate(e, u, reason) {
  if (e === null || e === undefined) return unpublished(reason);
  const parts = estimateParts(e, u);
  return h(
    "span",
    {
      class: "estimate",
      title: parts,
      dataset: { value: String(e.value), total: String(e.total), random: String(e.random), systematic: String(e.systematic) },
    },
    estimateText(e, u),
    h("span", { class: "visually-hidden" }, ` (${parts})`),
  );
}

/** The ``energy_figure_unbounded`` warning the service gave a null figure it calls ``label``. */
export function nullWarning(result, label) {
  const prefix = `${label} is null`;
  return result.warnings.find((w) => w.code === "energy_figure_unbounded" && w.message.startsWith(prefix)) || null;
}

/**
 * Why a figure is null: the first of ``labels`` (the names the service's warnings give
 * figures: "J/token", "Adjusted energy", "The prefill phase's energy"...) with a warning, else
 * ``fallback``, else a pointer to the warnings.
 */
export function whyNull(result, labels, fallback) {
  for (const label of [labels].flat()) {
    const warning = nullWarning(result, label);
    if (warning) return warning.message;
  }
  return fallback || "the run could not bound it; see the warnings";
}

/** Why an idle-subtracted figure is null when there may be no baseline at all. */
export function whyAdjustedNull(result, labels) {
  const e = result.energy;
  const fallback = e && e.baselines.length === 0 ? "no idle baseline was taken (baseline.enabled is false), so only raw energy is published" : null;
  return whyNull(result, labels, fallback);
}

/** Why a result has no energy at all: its ``energy_unavailable`` warning, or a pointer. */
export function whyNotMeasured(result) {
  const warning = result.warnings.find((w) => w.code === "energy_unavailable");
  return warning ? warning.message : "the warnings say why";
}
