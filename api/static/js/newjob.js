// A new job: the TorchScript file (chooser or drop zone) and the spec, checked
// as the user types; the server's own 4xx message lands next to the field it names.

import { loadOpenApi, submitJob } from "./api.js";
import { bytes, clear, h } from "./dom.js";
import { buildSpec, choicesFromOpenApi, fieldOf, PARSERS, setChoices } from "./spec.js";

const HELP = {
  model: "A classifier saved with torch.jit.save (script or trace).",
  input_shape: "One input: C,H,W for images (1,28,28), C,L for signals (1,128) or D for feature vectors (64).",
  task: "Compress: a smaller student. Extract: only the generators, for your own distillation.",
  preset: "quick: seconds, for trying things. default: our recipe. paper: the published MNIST recipe.",
  prior: "Samples the student learns from. auto: the recipe's choice (inputs synthesised against your model). Or: synthesis, KegNet generators (with random pen strokes for images), the paper's baselines, strokes alone, or none (Tucker only).",
  layers: "Module paths to factorise, comma-separated (conv3, layers3.0.conv1). Empty: every layer that gets smaller, except the first and the output layer.",
  ranks: "auto (the model 2x smaller), evbmf (chosen from the weights), a keep fraction like 0.5, or explicit ranks: conv3=11:7, fc1=32:64",
  target_ratio: "Optional: choose ranks so the whole model shrinks at least this much (leave ranks at auto).",
  quantize: "int8: also an int8 student (a 3-4x smaller file, faster on x86 CPUs), as TorchScript and as ONNX, calibrated on the job's generated samples. The float student is always there, with an ONNX copy.",
  seed: "Makes CPU runs repeatable.",
  budget_s: "Optional: the job's time on its worker, e.g. 90s, 15m or 1h30m. The recipe's steps are scaled to end within it, from a short measured warm-up. Empty: the preset as it is.",
};

// Ignored by an extract job: sent with their defaults so a stale entry cannot block it.
const COMPRESS_DEFAULTS = { prior: "auto", layers: "", ranks: "auto", target_ratio: "", quantize: "none" };

function errorSlot(name) {
  return h("p", { class: "field-error", id: `error-${name}`, role: "alert", "data-field": name });
}

function field(name, label, control) {
  control.id = `field-${name}`;
  control.name = name;
  control.setAttribute("aria-describedby", `error-${name} help-${name}`);
  return h(
    "div",
    { class: "field", "data-field": name },
    h("label", { for: control.id }, label),
    control,
    errorSlot(name),
    h("p", { class: "help", id: `help-${name}` }, HELP[name]),
  );
}

function select(choices, value) {
  return h(
    "select",
    {},
    choices.map((choice) => h("option", { value: choice, selected: choice === value }, choice)),
  );
}

function text(attrs) {
  return h("input", { type: "text", autocomplete: "off", spellcheck: "false", ...attrs });
}

function dropZone(onFile) {
  const input = h("input", { type: "file", id: "field-model", name: "model", class: "visually-hidden" });
  const chosen = h("span", { class: "chosen" }, "No file chosen");
  const zone = h(
    "label",
    { class: "dropzone", for: "field-model", "aria-describedby": "error-model help-model" },
    h("strong", {}, "Drop a TorchScript file here"),
    h("span", {}, "or click to choose one"),
    chosen,
  );
  function show(file) {
    chosen.textContent = file ? `${file.name} · ${bytes(file.size)}` : "No file chosen";
    zone.classList.toggle("has-file", Boolean(file));
    onFile(file);
  }
  input.addEventListener("change", () => show(input.files[0] || null));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const files = event.dataTransfer.files;
    if (files.length) {
      input.files = files;
      show(files[0]);
    }
  });
  return h(
    "div",
    { class: "field wide", "data-field": "model" },
    h("span", { class: "label" }, "TorchScript model"),
    input,
    zone,
    errorSlot("model"),
    h("p", { class: "help", id: "help-model" }, HELP.model),
  );
}

export function newJobView(main) {
  let file = null;
  const controls = {
    input_shape: text({ placeholder: "1,28,28", required: true, inputmode: "numeric" }),
    task: select([], ""),
    preset: select([], ""),
    prior: select([], ""),
    layers: text({ placeholder: "all that get smaller" }),
    ranks: text({ value: "auto" }),
    target_ratio: text({ placeholder: "none", inputmode: "decimal" }),
    quantize: select([], ""),
    seed: text({ value: "0", inputmode: "numeric" }),
    budget_s: text({ placeholder: "none", inputmode: "text" }),
  };
  const formError = h("p", { class: "form-error", role: "alert", id: "form-error" });
  const button = h("button", { type: "submit", class: "button primary", id: "submit-job" }, "Start job");
  const form = h("form", { id: "new-job", novalidate: true });

  function showError(name, message) {
    const slot = form.querySelector(`#error-${name}`);
    slot.textContent = message || "";
    const control = name === "model" ? form.querySelector(".dropzone") : controls[name];
    control.classList.toggle("invalid", Boolean(message));
    if (name !== "model") control.setAttribute("aria-invalid", message ? "true" : "false");
  }

  function check(name) {
    const result = PARSERS[name](controls[name].value);
    showError(name, result.error);
    return !result.error;
  }

  for (const [name, control] of Object.entries(controls)) {
    control.addEventListener("change", () => check(name));
    control.addEventListener("blur", () => check(name));
    // While typing, only clear an error that has been fixed; do not nag.
    control.addEventListener("input", () => PARSERS[name](control.value).error || showError(name, ""));
  }
  const compressOnly = h(
    "fieldset",
    { class: "grid" },
    h("legend", {}, "Compression"),
    field("prior", "Prior", controls.prior),
    field("ranks", "Ranks", controls.ranks),
    field("layers", "Layers", controls.layers),
    field("target_ratio", "Target ratio", controls.target_ratio),
    field("quantize", "Quantize", controls.quantize),
  );
  controls.task.addEventListener("change", () => {
    compressOnly.disabled = controls.task.value === "extract";
  });

  async function submit(event) {
    event.preventDefault();
    formError.textContent = "";
    const values = Object.fromEntries(Object.entries(controls).map(([name, control]) => [name, control.value]));
    if (values.task === "extract") Object.assign(values, COMPRESS_DEFAULTS);
    const { spec, errors = {} } = buildSpec(values);
    for (const name of Object.keys(controls)) showError(name, errors[name]);
    showError("model", file ? "" : "choose a TorchScript file");
    const firstWrong = Object.keys(errors)[0];
    if (!file || firstWrong) {
      (firstWrong ? controls[firstWrong] : form.querySelector("#field-model")).focus();
      return;
    }
    button.disabled = true;
    button.textContent = "Uploading…";
    try {
      const job = await submitJob(file, spec);
      location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      const name = fieldOf(error.field);
      if (name) showError(name, error.message);
      else formError.textContent = error.message;
    } finally {
      button.disabled = false;
      button.textContent = "Start job";
    }
  }
  form.addEventListener("submit", submit);

  // The choices (tasks, presets, priors, quantize) are the server's: read them from its schema.
  button.disabled = true;
  loadOpenApi()
    .then((doc) => {
      const loaded = choicesFromOpenApi(doc);
      setChoices(loaded);
      for (const [name, { values, default: chosen }] of Object.entries(loaded)) {
        clear(controls[name], ...values.map((value) => h("option", { value, selected: value === chosen }, value)));
      }
      button.disabled = false;
    })
    .catch((error) => {
      formError.textContent = `could not read the server's job options: ${error.message}`;
    });

  clear(
    form,
    dropZone((chosen) => {
      file = chosen;
      if (chosen) showError("model", "");
    }),
    h(
      "fieldset",
      { class: "grid" },
      h("legend", {}, "Job"),
      field("input_shape", "Input shape", controls.input_shape),
      field("task", "Task", controls.task),
      field("preset", "Preset", controls.preset),
      field("seed", "Seed", controls.seed),
      field("budget_s", "Time budget", controls.budget_s),
    ),
    compressOnly,
    formError,
    h("div", { class: "actions" }, h("a", { class: "button", href: "#/jobs" }, "Cancel"), button),
  );
  clear(main, h("div", { class: "toolbar" }, h("h1", {}, "New job")), h("section", { class: "card" }, form));
  return { stop() {} };
}
