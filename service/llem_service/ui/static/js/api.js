// The /v1 API from the page. The session cookie travels by itself (same origin); a
// state-changing request adds the session's CSRF token, which lives in this module's memory
// only. Errors are the server's problem documents.

let csrfToken = null;
let onSignedOut = () => {};

export function setCsrfToken(token) {
  csrfToken = token;
}

export function whenSignedOut(callback) {
  onSignedOut = callback;
}

export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `HTTP ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export async function api(path, { method = "GET", body, headers = {} } = {}) {
  const sent = { Accept: "application/json", ...headers };
  if (body !== undefined) sent["Content-Type"] = "application/json";
  if (!["GET", "HEAD"].includes(method) && csrfToken) sent["X-CSRF-Token"] = csrfToken;
  const response = await fetch(path, {
    method,
    headers: sent,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) {
    let problem;
    try {
      problem = await response.json();
    } catch {
      problem = { title: response.statusText, detail: "" };
    }
    if (response.status === 401 && !path.startsWith("/ui/session")) onSignedOut();
    throw new ApiError(response.status, problem);
  }
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

/** Submit a config as a new job (a fresh idempotency key: a deliberate new run). */
export function submit(config) {
  return api("/v1/experiments", {
    method: "POST",
    body: config,
    headers: { "Idempotency-Key": crypto.randomUUID() },
  });
}

/**
 * Follow a Server-Sent Events stream: ``onEvent(data)`` for each ``event`` message, until the
 * data says it is final (``isFinal``) or the returned function is called.
 */
export function follow(path, event, onEvent, isFinal = () => false) {
  const source = new EventSource(path, { withCredentials: true });
  source.addEventListener(event, (message) => {
    const data = JSON.parse(message.data);
    onEvent(data);
    if (isFinal(data)) source.close();
  });
  return () => source.close();
}

export const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
