// One job: live status, stage and progress with an ETA, loss curves, the
// generated samples, the before/after report, downloads and cancel.
// The page is built once and its parts updated in place on every poll, so
// nothing the user is looking at (a scrolled table, a loaded image) jumps.

import { cancelJob, download, fetchBlob, getJob } from "./api.js";
import { curvesView, formatMetric, metricKeys, metricLabel } from "./chart.js";
import { age, bytes, clear, duration, h, integer, localTime, number, parseTime, percent, ratio } from "./dom.js";
import { progressBar, statusBadge } from "./jobs.js";
import { poll } from "./poll.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

const DOWNLOADS = [
  ["model", "Student model", "student.pt"],
  ["model_int8", "Int8 student", "student_int8.pt"],
  ["model.onnx", "Student (ONNX)", "student.onnx"],
  ["model_int8.onnx", "Int8 student (ONNX)", "student_int8.onnx"],
  ["report", "Report (JSON)", "report.json"],
  ["samples.png", "Samples (PNG)", "samples.png"],
  ["latent_walk.png", "Latent walk (PNG)", "latent_walk.png"],
  ["generators", "Generators (zip)", "generators.zip"],
];

/** The stages a job goes through: "auto" shows extracting once the job has been there. */
function stagesOf(job) {
  const spec = job.spec || {};
  if (spec.task === "extract") return ["validating", "extracting", "exporting"];
  const prior = (job.report && job.report.prior) || spec.prior;
  const curves = Object.keys((job.metrics && job.metrics.curves) || {});
  const extracted = job.stage === "extracting" || curves.some((name) => name.startsWith("extracting"));
  const stages = ["validating"];
  if (prior === "kegnet" || prior === "synthesis" || extracted) stages.push("extracting");
  if (spec.task === "quantize") return [...stages, "exporting"]; // the teacher itself to int8
  stages.push("compressing");
  if (prior !== "none") stages.push("distilling");
  stages.push("exporting");
  return stages;
}

/** Seconds left, from the progress so far and the time it took; null until it means something. */
export function eta(progress, startedAt, now = Date.now()) {
  const started = parseTime(startedAt);
  if (!started || !(progress > 0.03) || progress >= 1) return null;
  const elapsed = (now - started.getTime()) / 1000;
  if (elapsed < 3) return null;
  return (elapsed * (1 - progress)) / progress;
}

/** Seconds left: from the worker's measured estimate of the whole job where it has one (a time
 * budget's), else from the progress so far. */
export function timeLeft(job, now = Date.now()) {
  const started = parseTime(job.started_at);
  const measured = job.metrics && job.metrics.estimate_s;
  if (started && measured) return Math.max(0, measured - (now - started.getTime()) / 1000);
  return eta(job.progress, job.started_at, now);
}

function stepper(job) {
  const stages = stagesOf(job);
  const current = job.status === "succeeded" ? stages.length : stages.indexOf(job.stage);
  return h(
    "ol",
    { class: "stepper" },
    stages.map((stage, index) => {
      let state = index < current ? "done" : index === current ? "active" : "todo";
      if (state === "active" && job.status === "failed") state = "failed";
      if (state === "active" && job.status === "cancelled") state = "stopped";
      return h("li", { class: state, "aria-current": state === "active" ? "step" : null }, stage);
    }),
  );
}

function statusLine(job) {
  const started = parseTime(job.started_at);
  const finished = parseTime(job.finished_at);
  const elapsed = started ? ((finished ? finished.getTime() : Date.now()) - started.getTime()) / 1000 : null;
  const pct = `${Math.round((Number(job.progress) || 0) * 100)} %`;
  switch (job.status) {
    case "queued":
      return job.cancel_requested ? "Cancelling…" : "Waiting for a worker…";
    case "running": {
      const left = timeLeft(job);
      const parts = [pct, job.stage || "starting"];
      parts.push(left === null ? "estimating time left…" : `about ${duration(left)} left`);
      if (job.spec && job.spec.budget_s) parts.push(`budget ${duration(job.spec.budget_s)}`);
      parts.push(`running for ${duration(elapsed)}`);
      if (job.cancel_requested) parts.push("cancelling…");
      return parts.join(" · ");
    }
    case "succeeded":
      return `Finished in ${duration(elapsed)}`;
    case "failed":
      return `Failed${job.stage ? ` while ${job.stage}` : ""} after ${duration(elapsed)}`;
    default:
      return `Cancelled${job.stage ? ` while ${job.stage}` : ""}${elapsed === null ? "" : ` after ${duration(elapsed)}`}`;
  }
}

function latestLine(job) {
  const latest = job.metrics && job.metrics.latest;
  if (job.status !== "running" || !latest || !latest.stage) return null;
  const parts = [`${latest.stage}: step ${number(latest.step)}${latest.total ? ` / ${number(latest.total)}` : ""}`];
  if (latest.detail) parts.push(latest.detail);
  for (const key of metricKeys([latest])) {
    if (!["total"].includes(key)) parts.push(`${metricLabel(key)} ${formatMetric(key, latest[key])}`);
  }
  return parts.join(" · ");
}

function change(before, after, smaller = "smaller", larger = "larger") {
  if (!before || !after) return "–";
  if (after === before) return "same";
  return after < before ? `${ratio(before / after)} ${smaller}` : `${ratio(after / before)} ${larger}`;
}

/** With quantize: int8, the int8 student against the teacher (After is the int8 file). */
function int8Rows(report, lat) {
  const int8 = report.int8;
  if (!int8) return [];
  const ms = (batch) => (int8.latency_ms || {})[`batch_${batch}`];
  return [
    ["Int8 student file size", report.file_size_before, int8.file_size, bytes],
    ["Int8 student parameters", report.params_before, int8.parameters ?? undefined, integer],
    ["Int8 MACs per input", report.macs_before, int8.macs ?? undefined, integer],
    ["Int8 CPU latency, batch 1", lat("before", 1), ms(1), (v) => `${number(v)} ms`, "faster", "slower"],
    ["Int8 CPU latency, batch 64", lat("before", 64), ms(64), (v) => `${number(v)} ms`, "faster", "slower"],
    ...int8OnnxRows(int8.onnx),
  ];
}

/** The int8 ONNX file against the float ONNX file it was quantised from (ONNX Runtime times). */
function int8OnnxRows(onnx) {
  if (!onnx || !onnx.file) return [];
  const ms = (side, batch) => ((onnx.latency_ms || {})[side] || {})[`batch_${batch}`];
  return [
    ["Int8 ONNX file size (float ONNX before)", onnx.float_file_size ?? undefined, onnx.file_size, bytes],
    ["ONNX Runtime latency, batch 1", ms("before", 1), ms("after", 1), (v) => `${number(v)} ms`, "faster", "slower"],
    ["ONNX Runtime latency, batch 64", ms("before", 64), ms("after", 64), (v) => `${number(v)} ms`, "faster", "slower"],
  ];
}

/** Teacher and student as torch.jit.optimize_for_inference makes them at load time. */
function optimisedRows(report) {
  const latency = (report.optimised || {}).latency_ms;
  if (!latency) return [];
  const ms = (side, batch) => (latency[side] || {})[`batch_${batch}`];
  return [
    ["Optimised at load, batch 1", ms("before", 1), ms("after", 1), (v) => `${number(v)} ms`, "faster", "slower"],
    ["Optimised at load, batch 64", ms("before", 64), ms("after", 64), (v) => `${number(v)} ms`, "faster", "slower"],
  ];
}

function beforeAfterTable(report) {
  const latency = report.latency_ms || {};
  const lat = (side, batch) => (latency[side] || {})[`batch_${batch}`];
  const rows = [
    ["Parameters", report.params_before, report.params_after, integer],
    ["File size", report.file_size_before, report.file_size_after, bytes],
    ["MACs per input", report.macs_before, report.macs_after, integer],
    ["CPU latency, batch 1", lat("before", 1), lat("after", 1), (v) => `${number(v)} ms`, "faster", "slower"],
    ["CPU latency, batch 64", lat("before", 64), lat("after", 64), (v) => `${number(v)} ms`, "faster", "slower"],
    ...optimisedRows(report),
    ...int8Rows(report, lat),
  ].filter(([, before, after]) => before !== undefined && after !== undefined);
  return h(
    "table",
    { class: "compare", id: "before-after" },
    h("thead", {}, h("tr", {}, h("th", {}, ""), h("th", { class: "num" }, "Before"), h("th", { class: "num" }, "After"), h("th", { class: "num" }, "Change"))),
    h(
      "tbody",
      {},
      rows.map(([label, before, after, format, smaller, larger]) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, label),
          h("td", { class: "num" }, format(before)),
          h("td", { class: "num" }, format(after)),
          h("td", { class: "num change" }, change(before, after, smaller, larger)),
        ),
      ),
    ),
  );
}

function layersTable(layers) {
  return h(
    "table",
    { class: "compare", id: "layers" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "Layer"),
        h("th", {}, "Ranks (out:in)"),
        h("th", { class: "num" }, "Params before"),
        h("th", { class: "num" }, "Params after"),
        h("th", { class: "num" }, "Change"),
        h("th", { class: "num" }, "CPU, batch 64"),
      ),
    ),
    h(
      "tbody",
      {},
      layers.map((layer) =>
        h(
          "tr",
          {},
          h(
            "th",
            { scope: "row", class: "mono" },
            layer.name,
            layer.kind ? h("small", {}, ` ${layer.kind}`) : null,
            layer.stored_as ? h("small", {}, ` saved ${layer.stored_as}`) : null,
          ),
          h("td", { class: "mono" }, Array.isArray(layer.ranks) ? layer.ranks.join(":") : String(layer.ranks)),
          h("td", { class: "num" }, integer(layer.params_before)),
          h("td", { class: "num" }, integer(layer.params_after)),
          h("td", { class: "num change" }, change(layer.params_before, layer.params_after)),
          h(
            "td",
            { class: "num" },
            Array.isArray(layer.latency_ms)
              ? `${number(layer.latency_ms[0])} → ${number(layer.latency_ms[1])} ms`
              : "–",
          ),
        ),
      ),
    ),
  );
}

function highlight(label, value, note) {
  return h("div", { class: "highlight" }, h("span", {}, label), h("strong", {}, value), note ? h("small", {}, note) : null);
}

/** The report's own estimate of the accuracy lost, or why it cannot give one. */
function qualityHighlight(quality) {
  if (!quality) return null;
  if (quality.estimated_loss === null || quality.estimated_loss === undefined) {
    return highlight("Estimated accuracy loss", "cannot tell", quality.reason);
  }
  return highlight(
    "Estimated accuracy loss",
    `${quality.estimated_loss.toFixed(2)} points`,
    quality.tucker_only_estimated_loss === null || quality.tucker_only_estimated_loss === undefined
      ? `Tucker only: a large loss; ${quality.reason}`
      : `Tucker only: ${Number(quality.tucker_only_estimated_loss).toFixed(2)}; ${quality.reason}`,
  );
}

function resultView(job) {
  const report = job.report || {};
  const agreement = report.agreement || {};
  const timings = report.timings_s || {};
  const parts = [];
  if (report.compression_ratio !== undefined) {
    parts.push(
      h(
        "div",
        { class: "highlights" },
        highlight("Compression", ratio(report.compression_ratio), "fewer parameters"),
        qualityHighlight(report.quality),
        highlight(
          "Agreement with teacher",
          percent(agreement.student_vs_teacher),
          agreement.source ? `on ${integer(agreement.samples)} held-out ${agreement.source} inputs` : null,
        ),
        highlight("Tucker only, before distilling", percent(agreement.tucker_only_vs_teacher)),
      ),
      h("div", { class: "scroll" }, beforeAfterTable(report)),
      report.student_form && report.student_form.summary
        ? h("p", { class: "note", id: "student-form" }, `Student file: ${report.student_form.summary}.`)
        : null,
      report.latency_note ? h("p", { class: "note", id: "latency-note" }, `Note: ${report.latency_note}.`) : null,
    );
  }
  if (Array.isArray(report.layers) && report.layers.length) {
    parts.push(h("h3", {}, "Layers"), h("div", { class: "scroll" }, layersTable(report.layers)));
  }
  const stageTimes = Object.entries(timings).filter(([name]) => name !== "total");
  if (stageTimes.length) {
    parts.push(
      h("h3", {}, "Time per stage"),
      h(
        "dl",
        { class: "figures" },
        stageTimes.map(([name, seconds]) => h("div", {}, h("dt", {}, name), h("dd", {}, duration(seconds)))),
        timings.total !== undefined ? h("div", {}, h("dt", {}, "total"), h("dd", {}, duration(timings.total))) : null,
        report.budget
          ? h(
              "div",
              { id: "budget-figure" },
              h("dt", {}, "budget"),
              h("dd", {}, `${duration(report.budget.budget_s)} (estimated ${duration(report.budget.estimated_s)}, steps ×${Number(report.budget.scale).toFixed(2)})`),
            )
          : null,
      ),
    );
  }
  return parts;
}

function specView(spec) {
  const shown = (value) => {
    if (value === null || value === undefined) return "–";
    if (Array.isArray(value)) return value.join(",");
    if (typeof value === "object") return Object.entries(value).map(([k, v]) => `${k}=${[].concat(v).join(":")}`).join(", ");
    return String(value);
  };
  return h(
    "dl",
    { class: "figures" },
    Object.entries(spec || {}).map(([key, value]) => h("div", {}, h("dt", {}, key.replaceAll("_", " ")), h("dd", { class: "mono" }, shown(value)))),
  );
}

function stemOf(name) {
  return (name || "model").replace(/\.[^.]*$/, "");
}

export function jobView(main, id) {
  const blobUrls = [];
  const title = h("h1", { class: "job-title" }, "Job");
  const badge = h("span");
  const meta = h("p", { class: "meta" });
  const cancelButton = h("button", { type: "button", class: "button danger", id: "cancel-job", hidden: true }, "Cancel job");
  const stepperSlot = h("div");
  const bar = h("div");
  const status = h("p", { class: "status-line", id: "status-line", role: "status" });
  const latest = h("p", { class: "latest mono", id: "latest" });
  const errorCard = h("section", { class: "card error-card", id: "job-error", hidden: true });
  const resultCard = h("section", { class: "card", id: "result", hidden: true });
  const downloads = h("div", { class: "downloads", id: "downloads" });
  const downloadError = h("p", { class: "form-error", role: "alert" });
  const downloadsCard = h("section", { class: "card", hidden: true }, h("h2", {}, "Downloads"), downloads, downloadError);
  const curves = h("div", { id: "curves" });
  const samples = h("div", { class: "image-slot", id: "samples" });
  const walk = h("div", { class: "image-slot", id: "latent-walk" });
  const spec = h("div");
  const notice = h("p", { class: "notice", role: "status", hidden: true });
  let curvesKey = "";
  let finishedRendered = false;
  let previewVersion = 0;
  let poller = null;

  cancelButton.addEventListener("click", async () => {
    cancelButton.disabled = true;
    try {
      await cancelJob(id);
    } catch (error) {
      notice.textContent = `Could not cancel: ${error.message}`;
      notice.hidden = false;
    }
    poller.now();
  });

  clear(
    main,
    h("a", { href: "#/jobs", class: "back" }, "← All jobs"),
    h("div", { class: "job-head" }, h("div", {}, h("div", { class: "title-row" }, title, badge), meta), cancelButton),
    notice,
    h("section", { class: "card progress-card" }, stepperSlot, bar, status, latest),
    errorCard,
    downloadsCard,
    resultCard,
    h("section", { class: "card" }, h("h2", {}, "Training curves"), curves),
    h(
      "div",
      { class: "two-up" },
      h("section", { class: "card" }, h("h2", {}, "Training samples"), h("p", { class: "help" }, "What the student learned from: one row per class, as the teacher sees it."), samples),
      h("section", { class: "card" }, h("h2", {}, "Latent walk"), h("p", { class: "help" }, "From one class to another through the generator's noise."), walk),
    ),
    h("section", { class: "card" }, h("h2", {}, "Spec"), spec),
  );

  function placeholder(slot, text) {
    clear(slot, h("div", { class: "placeholder" }, text));
  }

  async function showImage(slot, job, name, alt, live = false) {
    if (!job.links[name]) {
      const prior = (job.report && job.report.prior) || job.spec.prior;
      placeholder(
        slot,
        name === "latent_walk.png"
          ? `Only generators have a latent walk, and this job trained none (prior: ${prior}).`
          : `This job distilled on no images (prior: ${prior}), so there is no picture.`,
      );
      return;
    }
    if (!live || !slot.querySelector("img")) placeholder(slot, "Loading…");
    try {
      const { blob } = await fetchBlob(job.links[name]);
      const src = URL.createObjectURL(blob);
      blobUrls.push(src);
      clear(slot, h("img", { src, alt, class: "artifact", "data-artifact": name }));
    } catch (error) {
      placeholder(slot, `Could not load the image: ${error.message}`);
    }
  }

  function renderDownloads(job) {
    const stem = stemOf(job.model_name);
    const buttons = DOWNLOADS.filter(([name]) => job.links[name]).map(([name, label, file]) => {
      const fallback = name === "model" || name === "generators" ? `${stem}-${file}` : file;
      const button = h("button", { type: "button", class: "button", "data-download": name }, label);
      button.addEventListener("click", async () => {
        button.disabled = true;
        downloadError.textContent = "";
        try {
          await download(job.links[name], fallback);
        } catch (error) {
          downloadError.textContent = `Could not download ${label.toLowerCase()}: ${error.message}`;
        } finally {
          button.disabled = false;
        }
      });
      return button;
    });
    clear(downloads, buttons);
    downloadsCard.hidden = buttons.length === 0;
  }

  function renderFinished(job) {
    finishedRendered = true;
    if (job.status === "succeeded") {
      clear(resultCard, h("h2", {}, job.spec.task === "extract" ? "Result" : "Before and after"), resultView(job));
      resultCard.hidden = false;
      renderDownloads(job);
      showImage(samples, job, "samples.png", "Training samples, one row per class");
      showImage(walk, job, "latent_walk.png", "Latent walk between classes");
    } else {
      placeholder(samples, "No samples: the job did not finish.");
      placeholder(walk, "No latent walk: the job did not finish.");
    }
  }

  function render(job) {
    document.title = `${job.model_name} · ${job.status} · kegnet`;
    title.textContent = job.model_name;
    clear(badge, statusBadge(job.status));
    const times = [`created ${age(job.created_at)}`];
    if (job.finished_at) times.push(`finished ${localTime(job.finished_at)}`);
    clear(meta, h("span", { class: "mono" }, job.id), ` · ${times.join(" · ")}`, job.attempts > 1 ? ` · attempt ${job.attempts}` : "");
    cancelButton.hidden = TERMINAL.has(job.status);
    cancelButton.disabled = job.cancel_requested;
    cancelButton.textContent = job.cancel_requested ? "Cancelling…" : "Cancel job";
    clear(stepperSlot, stepper(job));
    clear(bar, progressBar(job.progress, job.status));
    status.textContent = statusLine(job);
    latest.textContent = latestLine(job) || "";
    latest.hidden = !latest.textContent;
    errorCard.hidden = !job.error;
    if (job.error) clear(errorCard, h("h2", {}, "Error"), h("p", {}, h("code", {}, job.error.code), " ", job.error.message));
    const nextCurves = JSON.stringify((job.metrics && job.metrics.curves) || {});
    if (nextCurves !== curvesKey || !curvesKey) {
      curvesKey = nextCurves;
      const views = curvesView(JSON.parse(nextCurves));
      if (views.length) clear(curves, views);
      else placeholder(curves, job.status === "queued" || job.status === "running" ? "The curves appear with the first training metrics." : "No training metrics were recorded.");
    }
    if (!spec.childElementCount) clear(spec, specView(job.spec));
    if (!TERMINAL.has(job.status)) {
      const version = (job.metrics && job.metrics.preview_version) || 0;
      if (job.links["samples.png"] && version !== previewVersion) {
        previewVersion = version;
        showImage(samples, job, "samples.png", "Training samples so far, one row per class", true);
      } else if (!previewVersion) {
        placeholder(samples, "Drawn as soon as the student's training inputs exist.");
      }
      placeholder(walk, "Drawn when the job has finished.");
    } else if (!finishedRendered) {
      renderFinished(job);
    }
  }

  async function tick() {
    try {
      const job = await getJob(id);
      notice.hidden = true;
      render(job);
      return !TERMINAL.has(job.status);
    } catch (error) {
      if (error.status === 401) return false;
      if (error.status === 404) {
        clear(main, h("a", { href: "#/jobs", class: "back" }, "← All jobs"), h("section", { class: "card" }, h("h1", {}, "No such job"), h("p", {}, error.message)));
        return false;
      }
      notice.textContent = `Could not load the job: ${error.message}. Retrying…`;
      notice.hidden = false;
      return true;
    }
  }

  poller = poll(tick);
  return {
    stop() {
      poller.stop();
      for (const url of blobUrls) URL.revokeObjectURL(url);
    },
  };
}
