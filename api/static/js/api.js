// The /v1 API with the signed-in key. The key lives in sessionStorage only
// (gone when the tab closes, never in a URL) and travels as a Bearer header.

const KEY_NAME = "kegnet.apiKey";

let unauthorizedHandler = () => {};

export class ApiError extends Error {
  constructor(status, code, message, field = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export function getKey() {
  return sessionStorage.getItem(KEY_NAME);
}

export function setKey(key) {
  sessionStorage.setItem(KEY_NAME, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY_NAME);
}

/** Called with the server's message when a request is refused with 401. */
export function onUnauthorized(handler) {
  unauthorizedHandler = handler;
}

/** Paths are relative ("v1/jobs") so the dashboard also works behind a path prefix. */
function url(path) {
  return path.replace(/^\//, "");
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: a proxy's page, for instance
  }
  const error = body && body.error;
  if (error && error.message) {
    return new ApiError(response.status, error.code, error.message, error.field || null);
  }
  return new ApiError(response.status, "http_error", `the server answered ${response.status}`);
}

/** fetch with the key; a refused key signs the user out (unless `key` is given to test it). */
export async function request(path, { method = "GET", body, key } = {}) {
  const headers = { Authorization: `Bearer ${key ?? getKey() ?? ""}` };
  let response;
  try {
    response = await fetch(url(path), { method, body, headers, cache: "no-store" });
  } catch {
    throw new ApiError(0, "network", "cannot reach the server; is it running?");
  }
  if (!response.ok) {
    const error = await errorFrom(response);
    if (response.status === 401 && key === undefined) unauthorizedHandler(error.message);
    throw error;
  }
  return response;
}

export async function getJson(path, options) {
  return (await request(path, options)).json();
}

export function listJobs({ limit = 20, offset = 0, status = "" } = {}) {
  const query = new URLSearchParams({ limit: String(limit), offset: String(offset) });
  if (status) query.append("status", status);
  return getJson(`v1/jobs?${query}`);
}

export function getJob(id) {
  return getJson(`v1/jobs/${encodeURIComponent(id)}`);
}

export function cancelJob(id) {
  return getJson(`v1/jobs/${encodeURIComponent(id)}/cancel`, { method: "POST" });
}

export function submitJob(file, spec) {
  const form = new FormData();
  form.append("spec", JSON.stringify(spec));
  form.append("model", file, file.name);
  return getJson("v1/jobs", { method: "POST", body: form });
}

let openApi = null;

/** The server's OpenAPI document (fetched once): the job spec's schema lives there. */
export async function loadOpenApi() {
  openApi = openApi || getJson("openapi.json");
  try {
    return await openApi;
  } catch (error) {
    openApi = null;
    throw error;
  }
}

/** Check a key before keeping it: any authenticated call will do. */
export async function checkKey(key) {
  await request("v1/jobs?limit=1", { key });
}

/** A protected file as a Blob (images and downloads need the Authorization header too). */
export async function fetchBlob(path) {
  const response = await request(path);
  return { blob: await response.blob(), filename: filenameOf(response) };
}

function filenameOf(response) {
  const header = response.headers.get("content-disposition") || "";
  // The UTF-8 name (RFC 6266) where the server sends one, else the ASCII fallback.
  const match = /filename\*=UTF-8''([^;]+)/i.exec(header) || /filename="?([^";]+)"?/i.exec(header);
  return match ? decodeURIComponent(match[1]) : null;
}

/** Fetch a protected file and hand it to the browser's save dialog under `fallbackName`. */
export async function download(path, fallbackName) {
  const { blob, filename } = await fetchBlob(path);
  const href = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = href;
  link.download = filename || fallbackName;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(href), 60_000);
}
