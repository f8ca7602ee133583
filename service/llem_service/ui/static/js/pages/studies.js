// Studies: the list, and one study: its points with progress (live), the ranked table, the
// time-energy frontier against tokens/s and against TTFT p90, and the cheapest point under
// latency targets (the server's /pareto answers; the page only draws it).

import { api, TERMINAL } from "../api.js";
import { forget, frontierChart } from "../charts.js";
import { append, clear, facts, h, message, section, table } from "../dom.js";
import { num, plusMinus, seconds, shortId, unit, when } from "../format.js";
import { progressCell, statusBadge } from "./jobs.js";

const REFRESH_MS = 5000;

export async function studiesPage(main, { say }) {
  const heading = h("h1", { tabindex: "-1" }, "Studies");
  const body = h("div", {});
  clear(main).append(heading, body);
  async function render() {
    const page = await api("/v1/studies?limit=100");
    clear(body).append(studiesTable(page));
  }
  await render();
  // Progress moves as runs end: re-read the list every few seconds while the page is seen.
  const timer = setInterval(() => {
    if (!document.hidden) render().catch((error) => say(`Could not refresh: ${error.message}`, "error"));
  }, REFRESH_MS);
  return () => clearInterval(timer);
}

function studiesTable(page) {
  return page.items.length
      ? table(
          "Studies, newest first",
          ["Study", "Status", "Points", "Runs done", "Submitted"],
          page.items.map((s) => {
            const done = (s.counts.succeeded || 0) + (s.counts.failed || 0) + (s.counts.cancelled || 0);
            return [h("a", { href: `/ui/studies/${s.id}` }, s.name), statusBadge(s.status), `${s.n_points} (${s.n_skipped} skipped)`, `${done} / ${s.n_runs}`, when(s.created_at)];
          }),
          { id: "studies" },
        )
      : message("No studies yet. Submit one with llem-client study run, or POST /v1/studies.");
}

function valuesText(values) {
  return Object.entries(values)
    .map(([k, v]) => `${k}=${typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ");
}

function energyOf(row, metric) {
  return metric ? row[metric] : null;
}

function runsTable(study) {
  return h(
    "table",
    { id: "study-runs" },
    h("caption", {}, "Runs in planned order (point × cycle), each an experiment job"),
    h("thead", {}, h("tr", {}, ["#", "Point", "Cycle", "Status", "Progress", "Tokens/s", "J/token", "Job"].map((c) => h("th", { scope: "col" }, c)))),
    h(
      "tbody",
      {},
      study.runs.map((run) =>
        h(
          "tr",
          { dataset: { jobId: run.job_id, status: run.status } },
          h("td", {}, run.position + 1),
          h("td", {}, valuesText(study.points.find((p) => p.index === run.point)?.values || {})),
          h("td", {}, run.cycle + 1, run.attempt > 1 ? ` (attempt ${run.attempt})` : ""),
          h("td", {}, statusBadge(run.status)),
          h("td", {}, progressCell({ id: run.job_id, progress: run.progress })),
          h("td", { class: "num" }, num(run.tokens_per_s)),
          h("td", { class: "num" }, run.status === "succeeded" && run.energy_per_output_token_j === null ? h("span", { class: "unpublished", title: "null in the run's result: its warnings say why" }, "not published") : unit(run.energy_per_output_token_j, "J")),
          h("td", {}, h("a", { href: `/ui/experiments/${run.job_id}`, class: "mono" }, shortId(run.job_id))),
        ),
      ),
    ),
  );
}

function rankedTable(pareto, swept) {
  const metric = pareto.energy_metric;
  const vsTps = new Set(pareto.frontier_vs_tokens_per_s);
  const vsTtft = new Set(pareto.frontier_vs_ttft_p90);
  const meeting = new Set(pareto.meeting_targets);
  const ranked = [...pareto.points].sort((a, b) => (energyOf(a, metric) ?? Infinity) - (energyOf(b, metric) ?? Infinity));
  const uncertainty = metric ? `${metric.replace(/_j$/, "")}_uncertainty_j` : null;
  return h(
    "table",
    { id: "study-ranked" },
    h("caption", {}, metric ? `Points ranked by ${metric.replaceAll("_", " ")} (lowest first); mean over cycles, ± the runs' mean total uncertainty (k = 2), [95% CI over cycles]` : "Points (no energy measured: ranked by design order)"),
    h("thead", {}, h("tr", {}, ["Rank", ...swept, "J/token", "Tokens/s", "TTFT p90", "ITL p90", "Cycles", "Frontier vs tokens/s", "Frontier vs TTFT", "Meets targets"].map((c) => h("th", { scope: "col" }, c)))),
    h(
      "tbody",
      {},
      ranked.map((row, i) => {
        const ci = metric && row.ci95[metric] ? ` [${num(row.ci95[metric].low)}–${num(row.ci95[metric].high)}]` : "";
        const front = vsTps.has(row.point) || vsTtft.has(row.point);
        const classes = [front ? "frontier" : "", meeting.has(row.point) ? "" : "excluded"].join(" ").trim();
        return h(
          "tr",
          { class: classes || null, dataset: { point: row.point } },
          h("td", {}, i + 1),
          swept.map((name) => h("td", {}, JSON.stringify(row.values[name] ?? null))),
          h("td", { class: "num" }, metric ? `${plusMinus(row[metric], uncertainty ? row[uncertainty] : null, "J")}${ci}` : "–"),
          h("td", { class: "num" }, num(row.tokens_per_s)),
          h("td", { class: "num" }, seconds(row.ttft_p90_s)),
          h("td", { class: "num" }, seconds(row.itl_p90_s)),
          h("td", {}, row.n_cycles),
          h("td", {}, vsTps.has(row.point) ? "yes" : ""),
          h("td", {}, vsTtft.has(row.point) ? "yes" : ""),
          h("td", {}, meeting.has(row.point) ? "yes" : "no"),
        );
      }),
    ),
  );
}

function frontierCharts(container, studyId, pareto) {
  const metric = pareto.energy_metric;
  forget(`frontier:${studyId}`);
  clear(container);
  if (!metric) {
    container.append(message("No point measured energy, so there is no time-energy frontier."));
    return;
  }
  const vsTps = new Set(pareto.frontier_vs_tokens_per_s);
  const vsTtft = new Set(pareto.frontier_vs_ttft_p90);
  const usable = pareto.points.filter((p) => p[metric] !== null);
  const one = (id, title, x, front, xLabel) => {
    const figure = h("figure", { class: "chart", id });
    container.append(figure);
    const points = usable.filter((p) => p[x] !== null).map((p) => ({ x: p[x], y: p[metric], point: p.point, frontier: front.has(p.point) }));
    frontierChart(figure, `frontier:${studyId}:${id}`, points, { xLabel, yLabel: "J per output token" });
    figure.append(h("figcaption", {}, `${title}: ${points.length} points, ${front.size} on the frontier (red). Lower is better on the vertical axis.`));
  };
  one("frontier-tps", "J/token against tokens/s", "tokens_per_s", vsTps, "output tokens/s (higher is better)");
  one("frontier-ttft", "J/token against TTFT p90", "ttft_p90_s", vsTtft, "TTFT p90, s (lower is better)");
}

export async function studyPage(main, { params, say }) {
  const [studyId] = params;
  let study = await api(`/v1/studies/${studyId}`);
  const swept = study.swept_fields;
  const headBox = h("div", {});
  const runsBox = h("div", {});
  const chartsBox = h("div", { class: "charts" });
  const rankedBox = h("div", {});
  const answer = h("p", { id: "pareto-answer", class: "message", role: "status" });
  const inputs = {
    max_ttft_p90_s: h("input", { type: "number", id: "max-ttft", min: "0", step: "any", inputmode: "decimal" }),
    max_itl_p90_s: h("input", { type: "number", id: "max-itl", min: "0", step: "any", inputmode: "decimal" }),
    min_tokens_per_s: h("input", { type: "number", id: "min-tps", min: "0", step: "any", inputmode: "decimal" }),
  };
  const targets = h(
    "form",
    { class: "filters", id: "targets" },
    h("label", { for: "max-ttft" }, "Max TTFT p90 (ms)", inputs.max_ttft_p90_s),
    h("label", { for: "max-itl" }, "Max ITL p90 (ms)", inputs.max_itl_p90_s),
    h("label", { for: "min-tps" }, "Min tokens/s", inputs.min_tokens_per_s),
    h("button", { type: "submit" }, "Find the cheapest point"),
  );
  const cancel = h("button", { type: "button", class: "danger" }, "Cancel study");

  function targetQuery() {
    const q = new URLSearchParams();
    const ms = (v) => String(Number(v) / 1000);
    if (inputs.max_ttft_p90_s.value) q.set("max_ttft_p90_s", ms(inputs.max_ttft_p90_s.value));
    if (inputs.max_itl_p90_s.value) q.set("max_itl_p90_s", ms(inputs.max_itl_p90_s.value));
    if (inputs.min_tokens_per_s.value) q.set("min_tokens_per_s", inputs.min_tokens_per_s.value);
    return q.toString();
  }

  function showHead() {
    append(clear(headBox), [
      facts([
        ["Status", statusBadge(study.status)],
        ["Design hash", h("code", {}, study.design_hash)],
        ["Points", `${study.n_points} valid, ${study.n_skipped} skipped`],
        ["Cycles / order", `${study.cycles}, ${study.order}${study.seed !== null ? ` (seed ${study.seed})` : ""}`],
        ["Runs", Object.entries(study.counts).map(([k, v]) => `${v} ${k}`).join(", ") || "–"],
        ["Isolation", study.isolation],
        ["Submitted", when(study.created_at)],
      ]),
      study.notes.length ? h("ul", {}, study.notes.map((n) => h("li", {}, n))) : null,
      study.skipped.length
        ? table("Skipped points (invalid configs)", ["Point", "Values", "Why"], study.skipped.map((s) => [s.index, valuesText(s.values), s.reason]))
        : null,
    ]);
    main.dataset.status = study.status;
    cancel.hidden = TERMINAL.has(study.status);
  }

  // Answers can arrive out of order (a refresh's, then the targets' sent after it): only the
  // latest request's answer is shown, or a stale one would undo the targets.
  let latest = 0;
  async function showResults() {
    const ticket = ++latest;
    const pareto = await api(`/v1/studies/${studyId}/pareto?${targetQuery()}`);
    if (ticket !== latest) return;
    answer.textContent = pareto.message;
    answer.dataset.best = pareto.best ? String(pareto.best.point) : "";
    frontierCharts(chartsBox, studyId, pareto);
    clear(rankedBox).append(rankedTable(pareto, swept));
  }

  async function refresh() {
    study = await api(`/v1/studies/${studyId}`);
    showHead();
    clear(runsBox).append(runsTable(study));
    await showResults();
  }

  targets.addEventListener("submit", (event) => {
    event.preventDefault();
    showResults().catch((error) => say(`Could not apply the targets: ${error.message}`, "error"));
  });
  cancel.addEventListener("click", async () => {
    try {
      await api(`/v1/studies/${studyId}/cancel`, { method: "POST" });
      say("Cancelling the study");
      await refresh();
    } catch (error) {
      say(`Could not cancel: ${error.message}`, "error");
    }
  });

  clear(main).append(
    h("div", { class: "page-head" }, h("h1", { tabindex: "-1" }, study.name, " ", h("small", { class: "mono" }, shortId(study.id))), h("div", { class: "actions" }, cancel)),
    headBox,
    section("Runs", "runs", runsBox),
    section(
      "Time–energy frontier",
      "frontier",
      h("p", { class: "note" }, "Each point's mean over its cycles. Red: the frontier (no other point is both cheaper per token and faster)."),
      chartsBox,
    ),
    section("Cheapest point under latency targets", "cheapest", targets, answer),
    section("Ranked points", "ranked", rankedBox),
    section(
      "Downloads",
      "downloads",
      h(
        "ul",
        { class: "downloads" },
        ["json", "csv", "parquet"].map((f) => h("li", {}, h("a", { href: `/v1/studies/${studyId}/results?format=${f}`, download: `${studyId}.results.${f}` }, `Results (${f.toUpperCase()})`))),
      ),
    ),
  );
  await refresh();
  // Live: the study's event stream says when something changed; the page re-reads then (at
  // most every second), and every few seconds regardless.
  let dirty = false;
  const source = TERMINAL.has(study.status) ? null : new EventSource(`/v1/studies/${studyId}/events`, { withCredentials: true });
  const mark = () => {
    dirty = true;
  };
  if (source) {
    source.addEventListener("study", mark);
    source.addEventListener("run", mark);
  }
  let ticks = 0;
  const timer = setInterval(() => {
    ticks += 1;
    if (document.hidden || TERMINAL.has(study.status)) {
      if (source && TERMINAL.has(study.status)) source.close();
      return;
    }
    if (dirty || ticks % (REFRESH_MS / 1000) === 0) {
      dirty = false;
      refresh().catch((error) => say(`Could not refresh: ${error.message}`, "error"));
    }
  }, 1000);
  return () => {
    clearInterval(timer);
    if (source) source.close();
    forget(`frontier:${studyId}`);
  };
}
