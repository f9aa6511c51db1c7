// factorflow dashboard: draws the charts from their JSON blocks, and follows a dead letter
// that is being retried. No libraries; everything works without it except these two.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(name, attrs, text) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawChart(figure) {
  const source = document.getElementById(figure.dataset.chart);
  const area = figure.querySelector(".chart-area");
  if (!source || !area) return;
  const data = JSON.parse(source.textContent);
  const labels = data.labels || [], values = data.values || [];
  if (!labels.length) return;
  const width = 800, height = 220, left = 44, bottom = 24, top = 10;
  const plotW = width - left - 8, plotH = height - top - bottom;
  const max = data.max || Math.max(1, ...values);
  const caption = figure.querySelector("figcaption");
  const total = values.reduce((a, b) => a + b, 0);
  const svg = el("svg", {
    viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-label": `${caption ? caption.textContent : "Chart"}: ${labels.length} days from ${labels[0]} to ${labels[labels.length - 1]}` +
      (data.kind === "line" ? `, ending at ${values[values.length - 1]} ${data.unit}` : `, ${total} ${data.unit} in all`),
  });
  svg.appendChild(el("line", { class: "axis", x1: left, y1: top + plotH, x2: width - 8, y2: top + plotH }));
  svg.appendChild(el("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotH }));
  svg.appendChild(el("text", { x: left - 6, y: top + 10, "text-anchor": "end" }, String(max)));
  svg.appendChild(el("text", { x: left - 6, y: top + plotH, "text-anchor": "end" }, "0"));
  const step = plotW / labels.length;
  const y = (v) => top + plotH - (plotH * v) / max;
  if (data.kind === "line") {
    const points = values.map((v, i) => `${left + step * (i + 0.5)},${y(v)}`).join(" ");
    svg.appendChild(el("polyline", { class: "line", points }));
    if (values.length <= 62) {  // a dot per day, so a single day still shows
      values.forEach((v, i) => {
        const dot = el("circle", { class: "dot", cx: left + step * (i + 0.5), cy: y(v), r: 4 });
        dot.appendChild(el("title", {}, `${labels[i]}: ${v} ${data.unit}`));
        svg.appendChild(dot);
      });
    }
  } else {
    values.forEach((v, i) => {
      const bar = el("rect", {
        class: "bar", x: left + step * i + step * 0.1, y: y(v),
        width: Math.max(step * 0.8, 1), height: top + plotH - y(v),
      });
      bar.appendChild(el("title", {}, `${labels[i]}: ${v} ${data.unit}`));
      svg.appendChild(bar);
    });
  }
  svg.appendChild(el("text", { x: left, y: height - 6 }, labels[0]));
  svg.appendChild(el("text", { x: width - 8, y: height - 6, "text-anchor": "end" }, labels[labels.length - 1]));
  area.replaceChildren(svg);
}

function followStatus(node) {
  const url = node.dataset.poll;
  const started = node.textContent.trim();
  let tries = 0;
  const tick = async () => {
    tries += 1;
    try {
      const answer = await fetch(url, { headers: { accept: "application/json" }, credentials: "same-origin" });
      if (answer.ok) {
        const body = await answer.json();
        if (body.status !== started) {
          window.location.reload();
          return;
        }
      }
    } catch (error) {
      // the server may be restarting: keep asking
    }
    if (tries < 150) window.setTimeout(tick, 2000);
  };
  window.setTimeout(tick, 1000);
}

document.addEventListener("DOMContentLoaded", () => {
  document.querySelectorAll("figure[data-chart]").forEach(drawChart);
  document.querySelectorAll("[data-poll]").forEach(followStatus);
});
