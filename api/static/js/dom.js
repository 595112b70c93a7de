// Small DOM and formatting helpers. Every text goes in through text nodes,
// never innerHTML, so model names and server messages cannot inject markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function append(node, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function setAttributes(node, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") {
      node.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (name === "dataset") {
      Object.assign(node.dataset, value);
    } else {
      node.setAttribute(name, value === true ? "" : String(value));
    }
  }
  return node;
}

/** h("p", {class: "x"}, "text", child) -> an HTML element. */
export function h(tag, attrs, ...children) {
  return append(setAttributes(document.createElement(tag), attrs), children);
}

/** The same for SVG elements. */
export function s(tag, attrs, ...children) {
  return append(setAttributes(document.createElementNS(SVG_NS, tag), attrs), children);
}

export function clear(node, ...children) {
  node.replaceChildren();
  return append(node, children);
}

// ---------------------------------------------------------------- formatting

/** The API answers UTC with a "Z"; treat a bare timestamp as UTC too. */
export function parseTime(text) {
  if (!text) return null;
  const zoned = /[zZ]|[+-]\d\d:?\d\d$/.test(text) ? text : `${text}Z`;
  const time = new Date(zoned);
  return Number.isNaN(time.getTime()) ? null : time;
}

export function duration(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  if (seconds < 9.95) return `${Math.max(0, seconds).toFixed(1)} s`;
  const total = Math.round(seconds);
  if (total < 60) return `${total} s`;
  const minutes = Math.floor(total / 60);
  if (minutes < 60) return `${minutes} min ${total % 60} s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours} h ${minutes % 60} min`;
  return `${Math.floor(hours / 24)} d`;
}

export function age(text, now = Date.now()) {
  const time = parseTime(text);
  if (!time) return "–";
  const seconds = Math.max(0, (now - time.getTime()) / 1000);
  if (seconds < 10) return "just now";
  if (seconds < 60) return `${Math.floor(seconds)} s ago`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 172800) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

export function localTime(text) {
  const time = parseTime(text);
  return time ? time.toLocaleString() : "";
}

export function bytes(value) {
  if (value === null || value === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB"];
  let size = Number(value);
  let unit = 0;
  while (size >= 1024 && unit < units.length - 1) {
    size /= 1024;
    unit += 1;
  }
  return unit === 0 ? `${size} B` : `${size.toFixed(size < 10 ? 2 : 1)} ${units[unit]}`;
}

export function integer(value) {
  return value === null || value === undefined ? "–" : Number(value).toLocaleString("en-US");
}

/** Three significant digits, scientific notation for the very small (learning rates). */
export function number(value) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "–";
  const x = Number(value);
  if (x !== 0 && Math.abs(x) < 1e-3) return x.toExponential(1);
  if (Math.abs(x) >= 1000) return Math.round(x).toLocaleString("en-US");
  return String(Number(x.toPrecision(3)));
}

export function percent(value, digits = 1) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "–";
  return `${(Number(value) * 100).toFixed(digits)} %`;
}

export function ratio(value) {
  if (value === null || value === undefined || !Number.isFinite(Number(value))) return "–";
  return `${Number(value).toFixed(2)}×`;
}
