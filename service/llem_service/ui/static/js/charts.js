// Charts, drawn with uPlot (vendored; see /ui/static/vendor/VENDORED.json). Every chart is
// registered in window.llem.charts under a name, so that its data can be read back (the
// browser tests check what a chart holds, not only that a canvas exists).

window.llem = window.llem || { charts: {} };

export const PHASE_COLORS = {
  baseline: "rgba(120, 120, 120, 0.18)",
  idle: "rgba(200, 200, 200, 0.12)",
  load: "rgba(148, 103, 189, 0.18)",
  warmup: "rgba(255, 187, 120, 0.25)",
  prefill: "rgba(214, 39, 40, 0.20)",
  decode: "rgba(44, 160, 44, 0.16)",
  between_batches: "rgba(31, 119, 180, 0.14)",
  prefill_passes: "rgba(227, 119, 194, 0.18)",
  baseline_after: "rgba(120, 120, 120, 0.18)",
};
export const MEASURED = new Set(["prefill", "decode", "between_batches"]);

function register(name, chart) {
  const old = window.llem.charts[name];
  if (old && old !== chart) old.destroy();
  window.llem.charts[name] = chart;
  return chart;
}

export function forget(prefix) {
  for (const name of Object.keys(window.llem.charts)) {
    if (name.startsWith(prefix)) {
      window.llem.charts[name].destroy();
      delete window.llem.charts[name];
    }
  }
}

function width(container) {
  return Math.max(320, Math.floor(container.getBoundingClientRect().width || 800));
}

/** Runs of consecutive samples in the same phase: [{phase, start, end}] on the x axis. */
export function phaseRuns(xs, phases) {
  const runs = [];
  for (let i = 0; i < xs.length; i += 1) {
    const last = runs[runs.length - 1];
    if (last && last.phase === phases[i]) {
      last.end = xs[i];
    } else {
      if (last) last.end = xs[i];
      runs.push({ phase: phases[i], start: xs[i], end: xs[i] });
    }
  }
  return runs;
}

/** The measured window: from the first to the last sample of a measured phase, or null. */
export function measuredWindow(xs, phases) {
  let start = null;
  let end = null;
  for (let i = 0; i < xs.length; i += 1) {
    if (MEASURED.has(phases[i])) {
      if (start === null) start = xs[i];
      end = xs[i];
    }
  }
  return start === null ? null : { start, end };
}

function shadePhases(runs, window_) {
  return (u) => {
    const { ctx } = u;
    const { top, height } = u.bbox;
    ctx.save();
    for (const run of runs) {
      const x0 = u.valToPos(run.start, "x", true);
      const x1 = u.valToPos(run.end, "x", true);
      ctx.fillStyle = PHASE_COLORS[run.phase] || "rgba(0,0,0,0.05)";
      ctx.fillRect(x0, top, Math.max(1, x1 - x0), height);
    }
    if (window_) {
      const x0 = u.valToPos(window_.start, "x", true);
      const x1 = u.valToPos(window_.end, "x", true);
      ctx.strokeStyle = "rgba(0, 0, 0, 0.65)";
      ctx.setLineDash([6, 4]);
      ctx.lineWidth = 1.5 * devicePixelRatio;
      ctx.strokeRect(x0, top, x1 - x0, height);
    }
    ctx.restore();
  };
}

const EXTRA_SERIES = {
  temperature_c: { label: "Temperature", unit: "°C", stroke: "#d62728", scale: "°C" },
  sm_clock_mhz: { label: "SM clock", unit: "MHz", stroke: "#9467bd", scale: "MHz" },
  utilization_pct: { label: "Utilisation", unit: "%", stroke: "#8c564b", scale: "%" },
};

/**
 * The power timeline of one GPU: power (W) against time (s), phases shaded, the measured window
 * outlined; ``extras`` names further columns to draw on their own axes.
 */
export function powerChart(container, name, rows, extras = []) {
  const runs = phaseRuns(rows.t_s, rows.phase);
  const window_ = measuredWindow(rows.t_s, rows.phase);
  const series = [
    { label: "t (s)", value: (u, v) => (v === null ? "–" : `${v.toFixed(3)} s`) },
    { label: "Power", stroke: "#1f77b4", width: 1.5, scale: "W", value: (u, v) => (v === null ? "–" : `${v.toFixed(1)} W`) },
  ];
  const axes = [
    { label: "time since the first counter mark (s)" },
    { label: "power (W)", scale: "W" },
  ];
  const data = [rows.t_s, rows.power_w];
  for (const column of extras) {
    const spec = EXTRA_SERIES[column];
    series.push({
      label: spec.label,
      stroke: spec.stroke,
      width: 1,
      scale: spec.scale,
      value: (u, v) => (v === null ? "–" : `${v} ${spec.unit}`),
    });
    axes.push({ label: `${spec.label} (${spec.unit})`, scale: spec.scale, side: 1, grid: { show: false } });
    data.push(rows[column]);
  }
  const chart = new uPlot(
    {
      title: undefined,
      width: width(container),
      height: 300,
      series,
      axes,
      scales: { x: { time: false } },
      cursor: { drag: { x: true, y: false } },
      hooks: { drawClear: [shadePhases(runs, window_)] },
    },
    data,
    container,
  );
  chart.llem = { runs, measuredWindow: window_ };
  return register(name, chart);
}

/** Vertical error bars (value ± total) for ``series`` of a chart, drawn over its plot. */
function whiskers(totals, colours) {
  return (u) => {
    const { ctx } = u;
    ctx.save();
    ctx.lineWidth = Math.max(1, devicePixelRatio);
    for (const [s, errors] of Object.entries(totals)) {
      const ys = u.data[s];
      if (!ys || !u.series[s].show) continue;
      ctx.strokeStyle = colours[s];
      for (let i = 0; i < ys.length; i += 1) {
        if (ys[i] === null || errors[i] === null) continue;
        const x = u.valToPos(u.data[0][i], "x", true);
        const y0 = u.valToPos(ys[i] - errors[i], "y", true);
        const y1 = u.valToPos(ys[i] + errors[i], "y", true);
        ctx.beginPath();
        ctx.moveTo(x, y0);
        ctx.lineTo(x, y1);
        ctx.moveTo(x - 3, y0);
        ctx.lineTo(x + 3, y0);
        ctx.moveTo(x - 3, y1);
        ctx.lineTo(x + 3, y1);
        ctx.stroke();
      }
    }
    ctx.restore();
  };
}

/**
 * Each request's energy: raw as bars, adjusted (idle subtracted) as dots when there is one,
 * each with its ± total as an error bar. ``raw`` and ``adjusted`` are lists of Estimates.
 */
export function requestChart(container, name, raw, adjusted) {
  const bars = uPlot.paths && uPlot.paths.bars ? uPlot.paths.bars({ size: [0.7, 40] }) : undefined;
  const xs = raw.map((_, i) => i + 1);
  const joules = (u, v) => (v === null ? "–" : `${v.toPrecision(4)} J`);
  const series = [
    { label: "request" },
    { label: "raw", stroke: "#2ca02c", fill: "rgba(44,160,44,0.35)", paths: bars, points: { show: false }, value: joules },
  ];
  const data = [xs, raw.map((e) => e.value)];
  const totals = { 1: raw.map((e) => e.total) };
  if (adjusted) {
    series.push({ label: "adjusted (idle subtracted)", stroke: "#d95f02", paths: () => null, points: { show: true, size: 7, stroke: "#d95f02", fill: "#d95f02" }, value: joules });
    data.push(adjusted.map((e) => e.value));
    totals[2] = adjusted.map((e) => e.total);
  }
  const lows = data.slice(1).flatMap((ys, s) => ys.map((y, i) => y - totals[s + 1][i]));
  const highs = data.slice(1).flatMap((ys, s) => ys.map((y, i) => y + totals[s + 1][i]));
  const chart = new uPlot(
    {
      width: width(container),
      height: 240,
      series,
      axes: [{ label: "request (workload order, every repeat)" }, { label: "energy (J)" }],
      scales: { x: { time: false, range: (u, min, max) => [min - 0.6, max + 0.6] }, y: { range: () => [Math.min(0, ...lows), Math.max(...highs) * 1.05] } },
      legend: { show: true },
      hooks: { draw: [whiskers(totals, { 1: "#1b5e20", 2: "#a04000" })] },
    },
    data,
    container,
  );
  chart.llem = { totals };
  return register(name, chart);
}

function padded(u, min, max) {
  if (min === null || max === null) return [0, 1];
  const pad = (max - min) * 0.08 || Math.abs(max) * 0.1 || 1;
  return [Math.max(0, min - pad), max + pad];
}

/**
 * A scatter of points (x, y) with the frontier marked: ``frontier`` flags each point.
 * Lower y is better; ``xBetter`` says whether a larger or smaller x is better.
 */
export function frontierChart(container, name, points, { xLabel, yLabel }) {
  const ordered = [...points].sort((a, b) => a.x - b.x);
  const xs = ordered.map((p) => p.x);
  const all = ordered.map((p) => p.y);
  const front = ordered.map((p) => (p.frontier ? p.y : null));
  const dots = { show: true, size: 8, stroke: "#1f77b4", fill: "#1f77b4" };
  const chart = new uPlot(
    {
      width: width(container),
      height: 320,
      series: [
        { label: xLabel },
        { label: "points", stroke: "rgba(0,0,0,0)", points: { ...dots, fill: "#9ecae1", stroke: "#1f77b4" }, paths: () => null },
        { label: "frontier", stroke: "#d62728", width: 2, spanGaps: true, points: { show: true, size: 11, stroke: "#d62728", fill: "#d62728" } },
      ],
      axes: [{ label: xLabel }, { label: yLabel }],
      // Padded ranges: a point on the edge of the plot is not cut in half.
      scales: { x: { time: false, range: padded }, y: { range: padded } },
    },
    [xs, all, front],
    container,
  );
  chart.llem = { points: ordered };
  return register(name, chart);
}
