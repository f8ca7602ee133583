// Service: what this host has and is doing. Devices, whether energy can be measured (and why
// not), the idle baselines kept for reuse, and the queue. Re-read every few seconds.

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
    clear(body).append(
      section(
        "This service",
        "about",
        facts([
          ["Version", info.service_version],
          ["Result schema", info.schema_version],
          ["Backends", info.backends.join(", ")],
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
        info.devices.length
          ? table("GPUs this service may use", ["Index", "Name", "UUID", "Memory"], info.devices.map((d) => [d.index, d.name, h("code", {}, d.uuid), bytes(d.memory_total_bytes)]))
          : message("No GPU visible to the service."),
      ),
      section(
        "Cached idle baselines",
        "baselines",
        baselines.items.length
          ? table(
              "Idle power kept for reuse (an experiment reuses one younger than its baseline.max_age_s)",
              ["GPU", "Idle power", "Measured", "Age", "Window", "How"],
              baselines.items.map((b) => [h("code", {}, b.device_uuid), plusMinus(b.power_w, b.power_uncertainty_w, "W"), when(b.measured_at), age(b.age_s), `${b.duration_s.toFixed(1)} s`, b.method]),
            )
          : message("None kept yet: the next experiment with a baseline measures one."),
      ),
      section(
        "Queue",
        "queue",
        facts([
          ["Running", running.items.length ? running.items.map((j) => h("a", { href: `/ui/experiments/${j.id}`, class: "mono" }, shortId(j.id), ` (${j.progress.phase})`)) : "nothing"],
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
