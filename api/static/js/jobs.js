// The jobs list: newest first, a status filter and pages, refreshed every 2 s.
// Filter and page live in the hash (#/jobs?status=running&offset=20) so a
// reload or a shared link shows the same list.

import { listJobs } from "./api.js";
import { age, clear, h, localTime, ratio } from "./dom.js";
import { poll } from "./poll.js";

const PAGE = 20;
const STATUSES = ["queued", "running", "succeeded", "failed", "cancelled"];

export function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, "data-status": status }, status);
}

export function progressBar(progress, status) {
  const value = Math.round(Math.max(0, Math.min(1, Number(progress) || 0)) * 100);
  return h(
    "div",
    {
      class: `bar status-${status}`,
      role: "progressbar",
      "aria-valuemin": 0,
      "aria-valuemax": 100,
      "aria-valuenow": value,
      "aria-label": "progress",
    },
    h("span", { style: `width: ${value}%` }),
  );
}

function jobRow(job) {
  const href = `#/jobs/${encodeURIComponent(job.id)}`;
  const compressionRatio = job.status === "succeeded" && job.report ? job.report.compression_ratio : null;
  const percentDone = Math.round((Number(job.progress) || 0) * 100);
  return h(
    "tr",
    { "data-job-id": job.id, "data-status": job.status, onclick: () => (location.hash = href) },
    h(
      "td",
      { "data-label": "Model", class: "model" },
      h("a", { href, onclick: (event) => event.stopPropagation() }, job.model_name),
      h("small", { class: "mono" }, job.id.slice(0, 8)),
    ),
    h("td", { "data-label": "Status" }, statusBadge(job.status)),
    h("td", { "data-label": "Stage", class: "stage" }, job.stage || "–"),
    h(
      "td",
      { "data-label": "Progress", class: "progress" },
      progressBar(job.progress, job.status),
      h("small", {}, `${percentDone} %`),
    ),
    h("td", { "data-label": "Ratio", class: "ratio num" }, compressionRatio ? ratio(compressionRatio) : "–"),
    h("td", { "data-label": "Age", class: "age", title: localTime(job.created_at) }, age(job.created_at)),
  );
}

function readQuery() {
  const query = new URLSearchParams(location.hash.split("?")[1] || "");
  const status = STATUSES.includes(query.get("status")) ? query.get("status") : "";
  const offset = Math.max(0, Number.parseInt(query.get("offset") || "0", 10) || 0);
  return { status, offset };
}

function hashFor({ status, offset }) {
  const query = new URLSearchParams();
  if (status) query.set("status", status);
  if (offset) query.set("offset", String(offset));
  const text = query.toString();
  return text ? `#/jobs?${text}` : "#/jobs";
}

function emptyState(status) {
  if (status) return h("p", { class: "empty" }, `No ${status} jobs.`);
  return h(
    "div",
    { class: "empty" },
    h("p", {}, "No jobs yet. Upload a TorchScript classifier to compress it without its training data."),
    h("a", { class: "button primary", href: "#/new" }, "New job"),
  );
}

export function jobsView(main) {
  const { status, offset } = readQuery();
  const filter = h(
    "select",
    { id: "status-filter", "aria-label": "filter by status" },
    h("option", { value: "" }, "all statuses"),
    STATUSES.map((name) => h("option", { value: name, selected: name === status }, name)),
  );
  filter.addEventListener("change", () => (location.hash = hashFor({ status: filter.value, offset: 0 })));
  const body = h("tbody");
  const table = h(
    "table",
    { class: "jobs", id: "jobs-table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Model", "Status", "Stage", "Progress", "Ratio", "Age"].map((name) =>
          h("th", { scope: "col", class: name === "Ratio" ? "num" : null }, name),
        ),
      ),
    ),
    body,
  );
  const empty = h("div");
  const pager = h("nav", { class: "pager", "aria-label": "pages" });
  const notice = h("p", { class: "notice", role: "status", hidden: true });

  clear(
    main,
    h(
      "div",
      { class: "toolbar" },
      h("h1", {}, "Jobs"),
      h("label", { class: "filter" }, h("span", { class: "visually-hidden" }, "Status"), filter),
      h("a", { class: "button primary", href: "#/new" }, "New job"),
    ),
    notice,
    h("div", { class: "card table-card" }, table, empty),
    pager,
  );

  function renderPager(total) {
    const first = total ? offset + 1 : 0;
    const last = Math.min(offset + PAGE, total);
    clear(
      pager,
      h("span", {}, `${first}–${last} of ${total}`),
      h("a", { class: "button", href: hashFor({ status, offset: Math.max(0, offset - PAGE) }), hidden: offset === 0 }, "Newer"),
      h("a", { class: "button", href: hashFor({ status, offset: offset + PAGE }), hidden: last >= total }, "Older"),
    );
  }

  async function tick() {
    try {
      const page = await listJobs({ limit: PAGE, offset, status });
      notice.hidden = true;
      clear(body, page.items.map(jobRow));
      table.hidden = page.items.length === 0;
      clear(empty, page.items.length === 0 ? emptyState(status) : null);
      renderPager(page.total);
    } catch (error) {
      if (error.status === 401) return false;
      notice.textContent = `Could not load the jobs: ${error.message}. Retrying…`;
      notice.hidden = false;
    }
    return true;
  }

  return poll(tick);
}
