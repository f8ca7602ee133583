// Service: what this host has and is doing. Where experiments run (the executor), the devices
// (MIG mode, the CUDA device order their indices follow, which job holds each), whether energy
// can be measured (and why not), the idle baselines kept for reuse, and the queue. Re-read
// every few seconds.

import { api } from "../api.js";
import { clear, facts, h, message, section, table } from "../dom.js";
import { age, bytes, plusMinus, shortId, when } from "../format.js";

const REFRESH_MS = 5000;

export default async function servicePage(main, { say }) {
  const body = h("div", {});
  clear(main).append(h("h1", { tabindex: "-1" }, "Service"), body);

  async function render() {
    const [info, baselines, running, queued] = await Promise.all([
      api("/v1/info"),
      api("/v1/baselines"),
      api("/v1/experiments?status=running&limit=50"),
      api("/v1/experiments?status=queued&limit=200"),
    ]);
    const meter = info.energy_meter_available
      ? h("span", { class: "badge succeeded" }, "measuring")
      : h("span", { class: "badge failed" }, "not available");
    const queue = [...queued.items].reverse(); // the API lists newest first; the queue runs oldest first
    const slots = new Map(info.gpus.map((g) => [g.uuid, g]));
    const holder = (uuid) => {
      const slot = slots.get(uuid);
      if (!slot) return info.executor === "slurm" ? "granted by Slurm" : "–";
      if (slot.job_id) return h("a", { href: `/ui/experiments/${slot.job_id}`, class: "mono" }, shortId(slot.job_id));
      if (slot.held_by) return `another llem service (${slot.held_by})`;
      return "free";
    };
    const inUse = info.gpus.filter((g) => g.job_id || g.held_by).length;
    const executor = info.executor_available
      ? h("span", {}, `${info.executor} `, h("span", { class: "badge succeeded" }, "available"))
      : h("span", {}, `${info.executor} `, h("span", { class: "badge failed" }, "not available"));
    clear(body).append(
      section(
        "This service",
        "about",
        facts([
          ["Version", info.service_version],
          ["Result schema", info.schema_version],
          ["Backends", info.backends.join(", ")],
          ["Executor", executor],
          info.executor_reason ? ["Why not", info.executor_reason] : null,
          ["GPUs per experiment", info.max_gpus_per_experiment === null ? "unknown" : `at most ${info.max_gpus_per_experiment}`],
        ]),
      ),
      section(
        "Energy meter",
        "meter",
        facts([
          ["Meter", info.energy_meter],
          ["Status", meter],
          info.energy_meter_reason ? ["Why not", info.energy_meter_reason] : null,
        ]),
      ),
      section(
        "Devices",
        "devices",
        facts([
          ["Device order", info.cuda_device_order ? `CUDA_DEVICE_ORDER=${info.cuda_device_order}${info.device_order_note ? ` (${info.device_order_note})` : ""}` : "unknown"],
          ["GPUs in use", info.gpus.length ? `${inUse} of ${info.gpus.length}` : info.executor === "slurm" ? "granted by Slurm" : "the whole host, one experiment at a time"],
        ]),
        info.devices.length
          ? table(
              "GPUs this service may use (CUDA index under the device order above)",
              ["Index", "Name", "UUID", "Memory", "MIG mode", "Running"],
              info.devices.map((d) => [d.index, d.name, h("code", {}, d.uuid), bytes(d.memory_total_bytes), d.mig_mode || "unknown", holder(d.uuid)]),
              { id: "devices-table" },
            )
          : message("No GPU visible to the service."),
      ),
      section(
        "Cached idle baselines",
        "baselines",
        baselines.items.length
          ? table(
              "Idle power kept for reuse (an experiment reuses one younger than its baseline.max_age_s)",
              ["GPU", "Idle power (± random, k = 2)", "Drift bound", "Temperature", "Measured", "Age", "Window", "How"],
              baselines.items.map((b) => [h("code", {}, b.device_uuid), plusMinus(b.power_w, b.random_uncertainty_w, "W"), `±${b.drift_bound_w.toFixed(2)} W`, b.temperature_c === null ? "–" : `${b.temperature_c.toFixed(1)} °C`, when(b.measured_at), age(b.age_s), `${b.duration_s.toFixed(1)} s`, b.method]),
            )
          : message("None kept yet: the next experiment with a baseline measures one."),
      ),
      section(
        "Queue",
        "queue",
        facts([
          ["Running", running.items.length ? running.items.map((j) => h("div", {}, h("a", { href: `/ui/experiments/${j.id}`, class: "mono" }, shortId(j.id)), ` ${j.model} (${j.progress.phase})`)) : "nothing"],
          ["Waiting", String(info.queue_length)],
        ]),
        queue.length
          ? table("Waiting jobs, in the order they will run", ["#", "Job", "Model", "Submitted"], queue.map((j, i) => [i + 1, h("a", { href: `/ui/experiments/${j.id}`, class: "mono" }, shortId(j.id)), j.model, when(j.created_at)]))
          : null,
      ),
    );
  }

  await render();
  const timer = setInterval(() => {
    if (!document.hidden) render().catch((error) => say(`Could not refresh: ${error.message}`, "error"));
  }, REFRESH_MS);
  return () => clearInterval(timer);
}
