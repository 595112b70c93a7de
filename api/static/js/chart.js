// Loss curves as inline SVG: one small chart per metric, each with its own
// scale, because losses, accuracies and learning rates differ by orders of
// magnitude and would flatten each other on shared axes.

import { h, number, percent, s } from "./dom.js";

const WIDTH = 280;
const HEIGHT = 140;
const PAD = { left: 54, right: 10, top: 10, bottom: 22 };

const LABELS = {
  loss: "loss",
  classifier_loss: "classifier loss",
  decoder_loss: "decoder loss",
  diversity_loss: "diversity loss",
  accuracy: "teacher accuracy",
  held_out_kl: "held-out KL",
  agreement: "agreement with teacher",
  lr: "learning rate",
  compression_ratio: "compression ratio",
};

const FRACTIONS = new Set(["accuracy", "agreement"]);
const STAGE_ORDER = ["validating", "extracting", "compressing", "distilling", "exporting"];

export function metricLabel(key) {
  return LABELS[key] || key.replaceAll("_", " ");
}

export function formatMetric(key, value, digits = 1) {
  return FRACTIONS.has(key) ? percent(value, digits) : number(value);
}

/** Numeric metric names of a curve, "loss" first, in the order the points use them. */
export function metricKeys(points) {
  const keys = [];
  for (const point of points) {
    for (const [key, value] of Object.entries(point)) {
      if (key !== "step" && typeof value === "number" && !keys.includes(key)) keys.push(key);
    }
  }
  return keys.sort((a, b) => (b === "loss") - (a === "loss"));
}

function ticks(low, high) {
  return [low, (low + high) / 2, high];
}

function scaleOf(domainLow, domainHigh, rangeLow, rangeHigh) {
  const span = domainHigh - domainLow || 1;
  return (value) => rangeLow + ((value - domainLow) / span) * (rangeHigh - rangeLow);
}

function yDomain(key, values) {
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (FRACTIONS.has(key)) return [Math.min(low, 0), Math.max(high, 1)];
  if (low === high) {
    const pad = Math.abs(low) * 0.1 || 1;
    return [low - pad, high + pad];
  }
  const pad = (high - low) * 0.08;
  low = low >= 0 && low - pad < 0 ? 0 : low - pad;
  return [low, high + pad];
}

/** One metric over the steps of one stage, as an <svg>. */
export function lineChart(key, points) {
  const data = points
    .filter((point) => Number.isFinite(point[key]) && Number.isFinite(Number(point.step)))
    .map((point) => [Number(point.step), point[key]]);
  const svg = s("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "img",
    "aria-label": `${metricLabel(key)} by step`,
    "data-metric": key,
  });
  if (data.length === 0) return svg;
  const steps = data.map(([step]) => step);
  const [xLow, xHigh] = [Math.min(...steps), Math.max(...steps)];
  const [yLow, yHigh] = yDomain(
    key,
    data.map(([, value]) => value),
  );
  const x = scaleOf(xLow, xHigh === xLow ? xLow + 1 : xHigh, PAD.left, WIDTH - PAD.right);
  const y = scaleOf(yLow, yHigh, HEIGHT - PAD.bottom, PAD.top);
  for (const tick of ticks(yLow, yHigh)) {
    svg.append(
      s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(tick), y2: y(tick), class: "grid" }),
      s("text", { x: PAD.left - 6, y: y(tick) + 4, class: "tick", "text-anchor": "end" }, formatMetric(key, tick, 0)),
    );
  }
  for (const [step, anchor] of [[xLow, "start"], [xHigh, "end"]]) {
    svg.append(s("text", { x: x(step), y: HEIGHT - 6, class: "tick", "text-anchor": anchor }, number(step)));
  }
  const path = data.map(([step, value], i) => `${i ? "L" : "M"}${x(step).toFixed(1)},${y(value).toFixed(1)}`);
  svg.append(s("path", { d: path.join(" "), class: "line" }));
  if (data.length <= 40) {
    for (const [step, value] of data) {
      svg.append(
        s("circle", { cx: x(step), cy: y(value), r: 2.5, class: "dot" }, s("title", {}, `step ${step}: ${formatMetric(key, value)}`)),
      );
    }
  }
  return svg;
}

function chartCard(key, points) {
  const last = [...points].reverse().find((point) => Number.isFinite(point[key]));
  return h(
    "figure",
    { class: "chart-card" },
    h("figcaption", {}, h("span", {}, metricLabel(key)), h("strong", {}, last ? formatMetric(key, last[key]) : "–")),
    lineChart(key, points),
  );
}

function figures(points) {
  const point = points[points.length - 1];
  return h(
    "dl",
    { class: "figures" },
    metricKeys(points).map((key) => h("div", {}, h("dt", {}, metricLabel(key)), h("dd", {}, formatMetric(key, point[key])))),
  );
}

/** Every stage's curves, in pipeline order; a stage with one point shows its values instead. */
export function curvesView(curves) {
  const stages = Object.keys(curves || {}).sort((a, b) => STAGE_ORDER.indexOf(a) - STAGE_ORDER.indexOf(b));
  return stages
    .filter((stage) => (curves[stage] || []).length > 0)
    .map((stage) => {
      const points = curves[stage];
      const details = [...new Set(points.map((point) => point.detail).filter(Boolean))];
      const body =
        points.length === 1
          ? figures(points)
          : h("div", { class: "charts" }, metricKeys(points).map((key) => chartCard(key, points)));
      return h(
        "section",
        { class: "stage-curves", "data-stage": stage },
        h("h3", {}, stage, details.length ? h("small", {}, ` · ${details[details.length - 1]}`) : null),
        body,
      );
    });
}
