// The dashboard's entry point: sign-in, then a small router over the views. Each view renders
// into <main> and returns a function that stops whatever it left running (streams, timers).

import { api, setCsrfToken, whenSignedOut } from "./api.js";
import { clear, h } from "./dom.js";
import jobsPage from "./pages/jobs.js";
import experimentPage from "./pages/experiment.js";
import comparePage from "./pages/compare.js";
import servicePage from "./pages/service.js";
import { studiesPage, studyPage } from "./pages/studies.js";

const ROUTES = [
  [/^\/ui\/?$/, jobsPage, "Jobs"],
  [/^\/ui\/experiments\/([0-9A-Za-z_-]+)\/?$/, experimentPage, "Experiment"],
  [/^\/ui\/studies\/?$/, studiesPage, "Studies"],
  [/^\/ui\/studies\/([0-9A-Za-z_-]+)\/?$/, studyPage, "Study"],
  [/^\/ui\/compare\/?$/, comparePage, "Compare"],
  [/^\/ui\/service\/?$/, servicePage, "Service"],
];

const main = document.getElementById("main");
const status = document.getElementById("status");
const signOut = document.getElementById("sign-out");
let stop = () => {};
let signedIn = false;
let shown = null; // the path and query of the view on screen

function say(text, kind = "info") {
  clear(status).append(h("p", { class: `message ${kind}` }, text));
  status.dataset.kind = kind;
}

function navigate(path) {
  history.pushState(null, "", path);
  render();
}

function markCurrent(path) {
  for (const link of document.querySelectorAll("header nav a")) {
    const href = link.getAttribute("href");
    const current = href === "/ui" ? path === "/ui" || path === "/ui/" || path.startsWith("/ui/experiments") : path.startsWith(href);
    if (current) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function render() {
  stop();
  stop = () => {};
  if (!signedIn) return;
  const path = location.pathname;
  shown = path + location.search;
  markCurrent(path);
  for (const [pattern, page, title] of ROUTES) {
    const match = path.match(pattern);
    if (!match) continue;
    document.title = `${title} · llem`;
    main.dataset.view = title.toLowerCase();
    main.dataset.ready = "false";
    clear(main).append(h("p", { class: "loading" }, "Loading…"));
    try {
      stop = (await page(main, { params: match.slice(1), navigate, say, query: new URLSearchParams(location.search) })) || (() => {});
    } catch (error) {
      clear(main).append(h("h1", { tabindex: "-1" }, title), h("p", { class: "message error", role: "alert" }, error.message));
    }
    main.dataset.ready = "true";
    const heading = main.querySelector("h1");
    if (heading) heading.focus({ preventScroll: true });
    return;
  }
  document.title = "Not found · llem";
  clear(main).append(h("h1", { tabindex: "-1" }, "Not found"), h("p", {}, "No view at this address. ", h("a", { href: "/ui" }, "Back to the jobs.")));
  main.dataset.ready = "true";
  main.querySelector("h1").focus({ preventScroll: true });
}

function askForToken(reason) {
  signedIn = false;
  stop();
  signOut.hidden = true;
  main.dataset.view = "sign-in";
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true, "aria-describedby": "sign-in-help sign-in-error" });
  const error = h("p", { id: "sign-in-error", class: "message error", role: "alert", hidden: !reason }, reason || "");
  const button = h("button", { type: "submit" }, "Sign in");
  const form = h(
    "form",
    { id: "sign-in", class: "sign-in" },
    h("h1", { tabindex: "-1" }, "Sign in"),
    h("p", { id: "sign-in-help" }, "This server asks for its API token (LLEM_API_TOKEN). The page exchanges it for a session cookie that scripts cannot read, and does not keep it."),
    h("label", { for: "token" }, "API token"),
    input,
    button,
    error,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    button.disabled = true;
    const token = input.value;
    input.value = "";
    try {
      const state = await api("/ui/session", { method: "POST", body: { token } });
      start(state);
    } catch (failure) {
      error.hidden = false;
      error.textContent = failure.status === 401 ? `Refused: ${failure.message}.` : `Could not sign in: ${failure.message}`;
      button.disabled = false;
      input.focus();
    }
  });
  clear(main).append(form);
  main.dataset.ready = "true";
  input.focus();
}

function start(state) {
  setCsrfToken(state.csrf_token);
  signedIn = true;
  signOut.hidden = !state.auth_required;
  render();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href]");
  if (!link || link.hasAttribute("download") || link.target || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !url.pathname.startsWith("/ui") || url.pathname.startsWith("/ui/static")) return;
  if (url.pathname === location.pathname && url.search === location.search && url.hash) return; // in-page link
  event.preventDefault();
  navigate(url.pathname + url.search);
});
// A fragment link (#section) also fires popstate: only another view re-renders.
window.addEventListener("popstate", () => {
  if (location.pathname + location.search !== shown) render();
});
signOut.addEventListener("click", async () => {
  try {
    await api("/ui/session", { method: "DELETE" });
  } finally {
    setCsrfToken(null);
    askForToken("");
  }
});
whenSignedOut(() => askForToken("The session has ended (expired, or the server's token changed). Sign in again."));

const state = await api("/ui/session");
if (state.authenticated) start(state);
else askForToken("");
