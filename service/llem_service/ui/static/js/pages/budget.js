// The uncertainty budget: what the headline J/token's uncertainty is made of, drawn straight
// from the result's energy.uncertainty (the service composes it; the page recomputes nothing).
// Each term is one source of error: its kind (random or systematic), its contribution (the
// expanded uncertainty it alone adds, k = 2, in the headline's unit) and its share of the
// variance; terms add in quadrature, largest first.

import { h, message, section } from "../dom.js";
import { num, percent, unit } from "../format.js";
import { estimate, whyAdjustedNull, whyNull } from "../figures.js";

const FIGURES = {
  adjusted_energy_per_output_token_j: { label: "adjusted J per output token (idle baseline subtracted)", why: ["Adjusted J/token", "Adjusted energy", "The baseline power"] },
  energy_per_output_token_j: { label: "raw J per output token", why: ["J/token", "The window's energy"] },
};

function shareCell(share) {
  const bar = h("span", { class: "bar" });
  // At most 70% of the cell: the percentage sits beside the bar.
  bar.style.width = `${Math.max(0.5, Math.min(70, share * 70))}%`;
  return h("td", { class: "bar-cell" }, bar, " ", percent(share));
}

function termRow(term) {
  return h(
    "tr",
    { dataset: { term: term.name, kind: term.kind, contribution: String(term.contribution), share: String(term.share) } },
    h("th", { scope: "row" }, h("code", {}, term.name)),
    h("td", {}, term.kind),
    h("td", { class: "num" }, `±${num(term.contribution, 3)} J`),
    shareCell(term.share),
    h("td", {}, term.description),
  );
}

function spread(result) {
  const e = result.energy;
  const stats = e.adjusted_energy_per_output_token_j !== null ? result.repeats.adjusted_energy_per_output_token_j : result.repeats.energy_per_output_token_j;
  if (stats && stats.n > 1) {
    return h("p", { id: "repeat-spread" }, `Across ${stats.n} repeats, J/token had a mean of ${unit(stats.mean, "J")} and a sample standard deviation of ${unit(stats.std, "J", 2)} (95% CI of the mean ${num(stats.ci95_low)} to ${num(stats.ci95_high)} J, Student's t). The budget's random terms are what one run's figure can be off by; this spread is what the runs showed.`);
  }
  return h("p", { class: "note" }, "One repeat: no run-to-run spread to show (set repeats > 1, or repeats as an object with a target, for a confidence interval).");
}

export function uncertaintyBudget(result) {
  const e = result.energy;
  const box = section("Uncertainty", "uncertainty");
  if (!e) {
    box.append(message("No energy was measured, so there is no energy uncertainty to break down."));
    return box;
  }
  const budget = e.uncertainty;
  if (!budget) {
    box.append(message("No budget: the run has no J/token figure (no output tokens)."));
    return box;
  }
  const figure = FIGURES[budget.figure] || { label: budget.figure, why: [] };
  const published = e[budget.figure];
  const why = budget.figure.startsWith("adjusted") ? whyAdjustedNull(result, figure.why) : whyNull(result, figure.why);
  const headline = published
    ? h("p", {}, `The headline figure, ${figure.label}: `, estimate(published, "J"), ".")
    : h("p", { class: "message", dataset: { unpublished: budget.figure } }, `The headline figure, ${figure.label}, is not published: ${why} The terms below show what its uncertainty is made of.`);
  const total = budget;  // the headline's random, systematic and total parts, published or not
  box.append(
    headline,
    h("p", { class: "note" }, `Expanded uncertainties (k = ${num(budget.coverage_factor)}: the truth lies within ± the total in about 95% of runs). Random terms change from run to run; systematic ones do not average away. Terms add in quadrature; the bars are each term's share of the variance.`),
    h(
      "table",
      { class: "budget", id: "budget" },
      h("caption", {}, `What the uncertainty of ${figure.label} is made of`),
      h("thead", {}, h("tr", {}, ["Term", "Kind", "Contribution (per token)", "Share", "What it is"].map((c) => h("th", { scope: "col" }, c)))),
      h(
        "tbody",
        {},
        budget.terms.map(termRow),
        h(
          "tr",
          { class: "total" },
          h("th", { scope: "row" }, "Total"),
          h("td", {}, `random ±${num(total.random, 3)} J, systematic ±${num(total.systematic, 3)} J`),
          h("td", { class: "num" }, `±${num(total.total, 3)} J`),
          h("td", {}, percent(1)),
          h("td", {}, "the terms in quadrature"),
        ),
      ),
    ),
    spread(result),
  );
  return box;
}
