// Jobs: every experiment, newest first, live. The list is re-read every few seconds (new jobs
// appear); running jobs and the first few in the queue follow their own event streams, so a
// job's start and its progress show as they happen. Streams are capped: a browser holds about
// six connections per server, and a long queue must not take them all.

import { api, follow, submit, TERMINAL } from "../api.js";
import { clear, h, message } from "../dom.js";
import { shortId, when } from "../format.js";

const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];
const REFRESH_MS = 3000;
const MAX_STREAMS = 4;

export function progressCell(job) {
  const p = job.progress || {};
  const label = p.total ? `${p.phase} ${p.completed}/${p.total} ${p.unit || ""}`.trim() : p.phase;
  const wrap = h("div", { class: "progress" });
  if (p.total) {
    wrap.append(h("progress", { max: p.total, value: p.completed, "aria-label": `Progress of job ${shortId(job.id)}` }));
  }
  wrap.append(h("span", {}, label));
  return wrap;
}

export function statusBadge(status) {
  return h("span", { class: `badge ${status}` }, status);
}

export async function runAgain(jobId, navigate) {
  const config = await api(`/v1/experiments/${jobId}/config`);
  const job = await submit(config);
  navigate(`/ui/experiments/${job.id}`);
}

export default async function jobsPage(main, { navigate, say, query }) {
  let filter = query.get("status") || "";
  const selected = new Set();
  const rows = new Map(); // job id -> {tr, status, cells}
  const streams = new Map(); // job id -> close()
  let timer = null;

  const statusSelect = h(
    "select",
    { id: "status-filter", name: "status" },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s, selected: s === filter }, s)),
  );
  const compareButton = h("button", { type: "button", disabled: true }, "Compare selected");
  const tbody = h("tbody", { id: "jobs-body" });
  const empty = h("p", { class: "message", hidden: true }, "No jobs yet. Submit one with llem-client run, or the API.");
  const jobTable = h(
    "table",
    { class: "jobs", id: "jobs" },
    h("caption", {}, "Experiments, newest first"),
    h(
      "thead",
      {},
      h("tr", {}, ["Compare", "Job", "Model", "Status", "Progress", "Submitted", "Actions"].map((c) => h("th", { scope: "col" }, c))),
    ),
    tbody,
  );

  clear(main).append(
    h("h1", { tabindex: "-1" }, "Jobs"),
    h(
      "div",
      { class: "toolbar" },
      h("label", { for: "status-filter" }, "Show jobs with ", statusSelect),
      compareButton,
    ),
    jobTable,
    empty,
  );

  statusSelect.addEventListener("change", () => {
    filter = statusSelect.value;
    const url = filter ? `/ui?status=${filter}` : "/ui";
    history.replaceState(null, "", url);
    refresh();
  });
  compareButton.addEventListener("click", () => navigate(`/ui/compare?ids=${[...selected].join(",")}`));

  function updateCompare() {
    compareButton.disabled = selected.size < 2;
    compareButton.textContent = `Compare selected (${selected.size})`;
  }

  function actions(job) {
    const cell = h("div", { class: "actions" });
    if (!TERMINAL.has(job.status)) {
      cell.append(
        h("button", {
          type: "button",
          class: "danger",
          "aria-label": `Cancel job ${shortId(job.id)}`,
          onclick: async (event) => {
            event.target.disabled = true;
            try {
              await api(`/v1/experiments/${job.id}/cancel`, { method: "POST" });
              say(`Cancelling job ${shortId(job.id)}`);
              refresh();
            } catch (error) {
              say(`Could not cancel: ${error.message}`, "error");
              event.target.disabled = false;
            }
          },
        }, "Cancel"),
      );
    }
    cell.append(
      h("button", {
        type: "button",
        "aria-label": `Run job ${shortId(job.id)} again with the same config`,
        onclick: async () => {
          try {
            await runAgain(job.id, navigate);
          } catch (error) {
            say(`Could not submit: ${error.message}`, "error");
          }
        },
      }, "Run again"),
    );
    return cell;
  }

  function fill(row, job) {
    const [, , , statusCell, progress, , actionCell] = row.tr.children;
    if (row.status !== job.status) {
      clear(statusCell).append(statusBadge(job.status));
      clear(actionCell).append(actions(job));
      row.status = job.status;
      row.tr.dataset.status = job.status;
    }
    clear(progress).append(progressCell(job));
  }

  function rowFor(job) {
    const box = h("input", {
      type: "checkbox",
      "aria-label": `Select job ${shortId(job.id)} for comparison`,
      checked: selected.has(job.id),
      disabled: job.status !== "succeeded",
      onchange: (event) => {
        if (event.target.checked) selected.add(job.id);
        else selected.delete(job.id);
        updateCompare();
      },
    });
    const tr = h(
      "tr",
      { dataset: { jobId: job.id } },
      h("td", {}, box),
      h("td", {}, h("a", { href: `/ui/experiments/${job.id}`, class: "mono" }, shortId(job.id))),
      h("td", {}, job.name ? [job.name, h("br"), h("small", {}, job.model)] : job.model),
      h("td", {}),
      h("td", {}),
      h("td", {}, when(job.created_at)),
      h("td", {}),
    );
    const row = { tr, status: null, box };
    fill(row, job);
    return row;
  }

  function show(job) {
    const row = rows.get(job.id);
    if (row) {
      fill(row, job);
      row.box.disabled = job.status !== "succeeded";
    }
    if (TERMINAL.has(job.status) && streams.has(job.id)) {
      streams.get(job.id)();
      streams.delete(job.id);
    }
  }

  /** Follow the running jobs, then the queued ones next in line, up to MAX_STREAMS. */
  function followActive(items) {
    const running = items.filter((j) => j.status === "running");
    const queued = items.filter((j) => j.status === "queued").reverse(); // oldest first
    const wanted = [...running, ...queued].slice(0, MAX_STREAMS).map((j) => j.id);
    for (const [id, close] of streams) {
      if (!wanted.includes(id)) {
        close();
        streams.delete(id);
      }
    }
    for (const id of wanted) {
      if (!streams.has(id)) {
        streams.set(id, follow(`/v1/experiments/${id}/events`, "job", show, (update) => TERMINAL.has(update.status)));
      }
    }
  }

  async function refresh() {
    let page;
    try {
      page = await api(`/v1/experiments?limit=100${filter ? `&status=${filter}` : ""}`);
    } catch (error) {
      say(`Could not list jobs: ${error.message}`, "error");
      return;
    }
    const ids = new Set(page.items.map((j) => j.id));
    for (const [id, row] of rows) {
      if (!ids.has(id)) {
        row.tr.remove();
        rows.delete(id);
      }
    }
    let before = null;
    for (const job of [...page.items].reverse()) {
      // oldest first, each inserted above the previous: newest ends on top
      let row = rows.get(job.id);
      if (!row) {
        row = rowFor(job);
        rows.set(job.id, row);
        tbody.insertBefore(row.tr, before);
      }
      before = row.tr;
      show(job);
    }
    followActive(page.items);
    empty.hidden = rows.size > 0;
  }

  await refresh();
  updateCompare();
  timer = setInterval(() => {
    if (!document.hidden) refresh();
  }, REFRESH_MS);
  return () => {
    clearInterval(timer);
    for (const close of streams.values()) close();
  };
}
