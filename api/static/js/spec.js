// The job spec form's rules, as pure functions: text in, {value} or {error} out.
// They mirror the server's checks so most mistakes are caught before an upload.
// The allowed values of the choice fields are not copied here: they come from
// the server's /openapi.json (the CompressionSpec schema), via setChoices().

const MAX_SEED = 2 ** 31;
const MODULE_PATH = /^[A-Za-z_]\w*(\.\w+)*$/;

const ok = (value) => ({ value });
const bad = (error) => ({ error });

function splitList(text) {
  return text
    .split(",")
    .map((part) => part.trim())
    .filter((part) => part !== "");
}

function positiveInteger(text) {
  return /^\d+$/.test(text) && Number(text) > 0 ? Number(text) : null;
}

/** "C,H,W" for an image, "C,L" for a signal or "D" for a feature vector, positive integers. */
export function parseInputShape(text) {
  const trimmed = text.trim();
  if (!trimmed) return bad("required: C,H,W for images (e.g. 1,28,28), C,L for signals (e.g. 1,128) or D for vectors (e.g. 64)");
  const parts = trimmed.split(/\s*[,x×]\s*/);
  const sizes = parts.map(positiveInteger);
  if (sizes.some((size) => size === null)) return bad("use positive integers separated by commas");
  if (sizes.length > 3) return bad("give C,H,W (three numbers), C,L (two) or D (one)");
  return ok(sizes);
}

/** Optional comma-separated module paths; empty means "every layer that gets smaller". */
export function parseLayers(text) {
  const names = splitList(text);
  if (names.length === 0) return ok(null);
  const wrong = names.find((name) => !MODULE_PATH.test(name));
  if (wrong) return bad(`"${wrong}" is not a module path like conv3 or layers3.0.conv1`);
  return ok(names);
}

/** "auto", "evbmf", a keep fraction in (0, 1], or "layer=OUT:IN, ..." explicit ranks. */
export function parseRanks(text) {
  const trimmed = text.trim();
  if (trimmed === "" || trimmed.toLowerCase() === "auto") return ok("auto");
  if (trimmed.toLowerCase() === "evbmf") return ok("evbmf");
  if (/^[\d.]+(e-?\d+)?$/i.test(trimmed)) {
    const fraction = Number(trimmed);
    if (!(fraction > 0 && fraction <= 1)) return bad("a keep fraction must be in (0, 1], e.g. 0.5");
    return ok(fraction);
  }
  const ranks = {};
  for (const pair of splitList(trimmed)) {
    const match = /^([^=\s]+)\s*=\s*(\d+)\s*:\s*(\d+)$/.exec(pair);
    if (!match) return bad(`"${pair}" is not layer=OUT:IN (e.g. conv3=11:7)`);
    const [, name, out, inner] = match;
    if (!MODULE_PATH.test(name)) return bad(`"${name}" is not a module path`);
    if (!positiveInteger(out) || !positiveInteger(inner)) return bad(`ranks of ${name} must be positive`);
    ranks[name] = [Number(out), Number(inner)];
  }
  return ok(ranks);
}

/** Optional; the whole model must shrink at least this much, so more than 1. */
export function parseTargetRatio(text) {
  const trimmed = text.trim();
  if (trimmed === "") return ok(null);
  const value = Number(trimmed);
  if (!Number.isFinite(value) || value <= 1) return bad("a number greater than 1, e.g. 4");
  return ok(value);
}

export function parseSeed(text) {
  const trimmed = text.trim();
  if (trimmed === "") return ok(0);
  if (!/^\d+$/.test(trimmed) || Number(trimmed) >= MAX_SEED) return bad("an integer from 0 to 2147483647");
  return ok(Number(trimmed));
}

const MIN_BUDGET_S = 10;
const MAX_BUDGET_S = 7 * 24 * 3600;

/** Optional: the job's time, as 90s, 15m, 1h30m or plain seconds; empty runs the preset as it is. */
export function parseBudget(text) {
  const trimmed = text.trim().toLowerCase();
  if (trimmed === "") return ok(null);
  let seconds = null;
  if (/^\d+(\.\d+)?$/.test(trimmed)) seconds = Number(trimmed);
  else {
    const match = /^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$/.exec(trimmed);
    if (match && (match[1] || match[2] || match[3])) {
      const [hours, minutes, secs] = match.slice(1).map((part) => Number(part || 0));
      seconds = hours * 3600 + minutes * 60 + secs;
    }
  }
  if (seconds === null) return bad("a duration like 90s, 15m or 1h30m");
  if (seconds < MIN_BUDGET_S || seconds > MAX_BUDGET_S) return bad("from 10 s to 7 days");
  return ok(seconds);
}

/** The spec fields whose values are a fixed set, read from the OpenAPI schema. */
export const CHOICE_FIELDS = ["task", "preset", "prior", "quantize"];

let choices = {};

/** {field: {values, default}} for the choice fields, from an /openapi.json document. */
export function choicesFromOpenApi(doc) {
  const schemas = (doc.components || {}).schemas || {};
  const spec = schemas.CompressionSpec;
  if (!spec) throw new Error("the server's OpenAPI document has no CompressionSpec");
  const result = {};
  for (const name of CHOICE_FIELDS) {
    const property = spec.properties[name] || {};
    const ref = property.$ref || ((property.allOf || [])[0] || {}).$ref;
    const target = ref ? schemas[ref.split("/").pop()] : property;
    if (!target || !Array.isArray(target.enum)) throw new Error(`no allowed values for ${name}`);
    result[name] = { values: target.enum, default: property.default ?? target.enum[0] };
  }
  return result;
}

/** Use these allowed values from now on (see choicesFromOpenApi). */
export function setChoices(loaded) {
  choices = loaded;
}

function oneOf(name) {
  return (text) => {
    const allowed = (choices[name] || {}).values || [];
    return allowed.includes(text) ? ok(text) : bad(`one of ${allowed.join(", ")}`);
  };
}

export const PARSERS = {
  input_shape: parseInputShape,
  layers: parseLayers,
  ranks: parseRanks,
  target_ratio: parseTargetRatio,
  prior: oneOf("prior"),
  preset: oneOf("preset"),
  seed: parseSeed,
  budget_s: parseBudget,
  task: oneOf("task"),
  quantize: oneOf("quantize"),
};

/** The spec JSON for POST /v1/jobs, or the errors by field name. */
export function buildSpec(values) {
  const spec = {};
  const errors = {};
  for (const [field, parse] of Object.entries(PARSERS)) {
    const result = parse(String(values[field] ?? ""));
    if ("error" in result) errors[field] = result.error;
    else spec[field] = result.value;
  }
  return Object.keys(errors).length ? { errors } : { spec };
}

/** The form field a server error names ("spec.ranks.conv3" -> "ranks"), or null. */
export function fieldOf(serverField) {
  if (!serverField) return null;
  if (serverField === "model") return "model";
  const name = serverField.replace(/^spec\.?/, "").split(".")[0];
  return name in PARSERS ? name : null;
}
