// How the readings behind the energy figures were taken (energy.acquisition: the sampler, what
// became of each GPU's power readings, fields that changed mid-run, throttling by cause,
// every process seen on the GPUs), and where the experiment ran (placement: its GPUs and the
// experiments that overlapped it).

import { facts, h, message, section, table } from "../dom.js";
import { bytes, count, num, percent, seconds, shortId, when } from "../format.js";

const CAUSES = [
  ["power_capped", "Power capped"],
  ["thermal", "Thermal"],
  ["hardware_slowdown", "Hardware slowdown"],
  ["clock_limited", "Below application clocks (any cause)"],
];

function sampler(e) {
  const a = e.acquisition.sampler;
  const s = e.sampler;
  return facts([
    ["Sampler", `${a.mode === "process" ? "its own process" : a.mode === "thread" ? "a thread of the experiment's process" : a.mode}${a.pid ? ` (PID ${a.pid})` : ""}`],
    ["Interval asked / achieved", `${seconds(s.interval_s)} / ${seconds(s.achieved_interval_p50_s)} median, ${seconds(s.achieved_interval_p99_s)} p99`],
    ["Sampling rounds", `${count(s.n_samples)} (${seconds(s.cost_per_sample_s)} each), ${bytes(a.samples_bytes)} written`],
    ["Process polls", `${count(a.process_polls)}, every ${seconds(a.process_poll_interval_s)}`],
  ]);
}

function powerReadings(e) {
  return table(
    "Power readings per GPU: what was kept and what was dropped",
    ["GPU", "Field", "Why", "Refresh / lag", "Readings", "Kept", "Repeats dropped", "≤ 0 W dropped", "Failed"],
    e.acquisition.power.map((p) => [
      h("code", {}, p.device_uuid),
      p.field_at_end !== p.field ? `${p.field || "none"} → ${p.field_at_end || "none"}` : p.field || "none",
      p.field_reason,
      `${p.refresh_period_s ? seconds(p.refresh_period_s) : "–"} / ${p.lag_s === null ? "–" : seconds(p.lag_s)}`,
      count(p.readings),
      count(p.kept),
      count(p.repeats_dropped),
      count(p.nonpositive_dropped),
      count(p.failed),
    ]),
    { id: "power-readings" },
  );
}

function fieldChanges(e) {
  const changes = e.acquisition.field_changes;
  if (!changes.length) return h("p", { class: "note", id: "field-changes" }, "No field changed during the run.");
  return table(
    "Fields that changed or were given up during the run",
    ["At", "GPU", "Field", "Before → after", "Why"],
    changes.map((c) => [`${num(c.at_s, 4)} s`, h("code", {}, c.device_uuid), c.field, `${c.before ?? "–"} → ${c.after ?? "given up"}`, c.reason]),
    { id: "field-changes" },
  );
}

function cause(c) {
  if (c.fraction === null) return "unknown here";
  const source = c.source === "violation_counter" ? "violation counter" : c.source === "clock_event_samples" ? "clock-event samples" : c.source;
  return `${percent(c.fraction)} (${source})`;
}

function throttling(e) {
  return table(
    "Share of the measured window each GPU's clocks were held down, by cause (power capping is normal at full load; thermal and hardware slowdown warn)",
    ["GPU", ...CAUSES.map(([, label]) => label)],
    e.acquisition.throttling.map((t) => [h("code", {}, t.device_uuid), ...CAUSES.map(([key]) => h("span", { dataset: { cause: key } }, cause(t[key])))]),
    { id: "throttling" },
  );
}

function own(value) {
  return value === null ? "cannot tell" : value ? "this experiment" : "another process";
}

function processes(e) {
  const a = e.acquisition;
  return [
    table(
      "Whether another process on a GPU would have been seen",
      ["GPU", "Detection", "Why"],
      a.process_detection.map((d) => [h("code", {}, d.device_uuid), h("span", { class: `badge ${d.detection === "full" ? "succeeded" : "cancelled"}` }, d.detection), d.reason]),
      { id: "process-detection" },
    ),
    a.processes.length
      ? table(
          "Every process NVML listed on a metered GPU",
          ["PID", "GPU", "Whose", "During the window", "Seen", "Polls", "Most memory"],
          a.processes.map((p) => [p.pid, h("code", {}, p.device_uuid), own(p.own), p.during_measured_window ? "yes" : "no", `${when(p.first_seen_at)} – ${when(p.last_seen_at)}`, p.polls, bytes(p.max_used_memory_bytes)]),
          { id: "processes" },
        )
      : h("p", { class: "note", id: "processes" }, "No process was listed on the metered GPUs."),
  ];
}

export function acquisitionSection(result) {
  const e = result.energy;
  if (!e) return null;
  const box = section("Acquisition", "acquisition");
  if (!e.acquisition) {
    box.append(message("This result does not say how its readings were taken (a service before 0.2)."));
    return box;
  }
  box.append(
    sampler(e),
    h("h3", {}, "Power readings"),
    powerReadings(e),
    fieldChanges(e),
    h("h3", {}, "Throttling"),
    throttling(e),
    h("h3", {}, "Processes"),
    ...processes(e),
  );
  return box;
}

export function placementSection(result) {
  const box = section("Placement", "placement");
  const p = result.placement;
  if (!p) {
    box.append(message("This result does not say where it ran (a service before 0.2)."));
    return box;
  }
  const overlaps = p.overlapping_experiments;
  box.append(
    facts([
      ["Executor", `${p.executor}${p.executor_ref ? ` (Slurm job ${p.executor_ref})` : ""}`],
      ["Host", p.host],
      ["GPUs granted", p.gpus.length ? p.gpus.map((g) => h("div", {}, h("code", {}, g))) : "none the service could see"],
      ["Alone on the host", p.exclusive_host ? "yes (exclusive_host)" : overlaps.length ? "no" : "no other experiment ran"],
    ]),
    overlaps.length
      ? table(
          "Other llem experiments that ran on the same host meanwhile (they share CPUs, PCIe and memory bandwidth)",
          ["Experiment", "Host", "Its GPUs", "Service", "Overlap"],
          overlaps.map((o) => [
            o.service ? h("span", { class: "mono" }, shortId(o.experiment_id)) : h("a", { href: `/ui/experiments/${o.experiment_id}`, class: "mono" }, shortId(o.experiment_id)),
            o.host,
            o.gpus.length ? o.gpus.map((g) => h("div", {}, h("code", {}, g))) : "unknown",
            o.service || "this one",
            `${o.service ? "at least " : ""}${seconds(o.overlap_s)}`,
          ]),
          { id: "overlapping" },
        )
      : h("p", { class: "note", id: "overlapping" }, "No other experiment overlapped this one."),
  );
  return box;
}
