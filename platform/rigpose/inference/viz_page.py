"""The HTML, CSS and JavaScript of the `rigpose viz` page: a self-contained file that draws the data it embeds.

`render_page(data, ...)` puts the page data of `rigpose.inference.viz.page_data` into one
`<script type="application/json" id="rigpose-data">` element and adds the drawing script inline: no library, no
external URL, nothing fetched, so the page opens offline, from a file, or from an MLflow artifact view. The script
computes nothing but screen positions: 3D orbit (drag to rotate, wheel to zoom) and image-to-panel scaling.

`page.html#frame=K` opens the page at its K-th frame (0-based). After every frame it draws, the script sets on
`<main id="rigpose-viz">`: data-frame (the frame's index in the page) and data-rendered, the bone segments drawn
for it (3D view, plus each camera's detections and reprojections; a bone counts where both its joints are known);
data-render-error holds the message of any script error. Headless-browser tests read these
(tests/integration/test_viz_browser.py).
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from typing import Any

MARKER_ID = "rigpose-viz"  # the <main> element carrying data-rendered / data-frame / data-render-error
DATA_ID = "rigpose-data"  # the <script type="application/json"> element holding the page data

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 16px; color: #222; background: #fff; }
h1 { font-size: 18px; margin: 0 0 4px; }
.info { margin: 0 0 8px; color: #555; }
.info span { margin-right: 14px; }
.note { margin: 0 0 8px; color: #8a5a00; }
.legend { margin: 0 0 10px; color: #555; font-size: 12px; }
.controls { display: flex; align-items: center; gap: 10px; margin: 6px 0 12px; }
.controls input[type=range] { flex: 1; max-width: 720px; }
.layout { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
.view3d canvas { border: 1px solid #bbb; cursor: grab; touch-action: none; background: #fcfcfc; }
.hint { color: #777; font-size: 12px; }
.cameras { display: flex; flex-wrap: wrap; gap: 14px; flex: 1 1 540px; }
.camera { display: flex; gap: 8px; align-items: flex-start; }
.camera h3 { font-size: 13px; margin: 0 0 4px; }
.stats { font-size: 12px; width: 132px; }
.stats canvas { display: block; margin-top: 2px; }
.stats b { font-size: 14px; }
"""

_JS = r"""
"use strict";
(function () {
  const root = document.getElementById("rigpose-viz");
  window.addEventListener("error", (e) => root.setAttribute("data-render-error", String(e.message)));
  try {
    main();
  } catch (e) {
    root.setAttribute("data-render-error", String(e && e.message ? e.message : e));
    throw e;
  }

  function main() {
    const data = JSON.parse(document.getElementById("rigpose-data").textContent);
    const B = data.frames.length;
    const COLOUR = {left: "#1f77b4", right: "#d62728", centre: "#595959"};
    const side = data.joint_names.map(() => "centre");
    data.left.forEach((j) => { side[j] = "left"; });
    data.right.forEach((j) => { side[j] = "right"; });
    const boneColour = data.bones.map((bone) => COLOUR[side[bone[0]]]);
    const segments = {view3d: 0, cameras: data.cameras.map(() => 0)};
    let current = 0;

    function line(ctx, a, b) {
      ctx.beginPath();
      ctx.moveTo(a[0], a[1]);
      ctx.lineTo(b[0], b[1]);
      ctx.stroke();
    }

    // bones whose two joints are known, through `map` (data -> canvas px); returns how many were drawn
    function bones(ctx, points, map) {
      let n = 0;
      data.bones.forEach((bone, i) => {
        const a = points[bone[0]], b = points[bone[1]];
        if (a === null || b === null) return;
        ctx.strokeStyle = boneColour[i];
        line(ctx, map(a), map(b));
        n += 1;
      });
      return n;
    }

    function dots(ctx, points, map, radius) {
      points.forEach((p, j) => {
        if (p === null) return;
        const q = map(p);
        ctx.fillStyle = COLOUR[side[j]];
        ctx.beginPath();
        ctx.arc(q[0], q[1], radius, 0, 2 * Math.PI);
        ctx.fill();
      });
    }

    // ------------------------------------------------------------------ 3D view (world metres, z up)
    const canvas3d = document.getElementById("view3d");
    const ctx3 = canvas3d.getContext("2d");
    const view = {azimuth: -0.9, elevation: 0.35, zoom: 1.0};
    const lo = [Infinity, Infinity, Infinity], hi = [-Infinity, -Infinity, -Infinity];
    data.joints.forEach((frame) => frame.forEach((p) => {
      if (p === null) return;
      for (let k = 0; k < 3; k++) { lo[k] = Math.min(lo[k], p[k]); hi[k] = Math.max(hi[k], p[k]); }
    }));
    const seen = lo[0] <= hi[0];
    const centre = seen ? lo.map((v, k) => (v + hi[k]) / 2) : [0, 0, 1];
    const extent = seen ? Math.max(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2], 1.0) : 2.0;  // metres
    const floorZ = data.floor_z !== null ? data.floor_z : (seen ? lo[2] : 0);

    // a direction (x, y, z) -> [right, up, depth]: turned about z by the azimuth, tilted by the elevation
    function turn(x, y, z) {
      const ca = Math.cos(view.azimuth), sa = Math.sin(view.azimuth);
      const ce = Math.cos(view.elevation), se = Math.sin(view.elevation);
      const x1 = ca * x - sa * y, y1 = sa * x + ca * y;
      return [x1, ce * z + se * y1, ce * y1 - se * z];
    }

    function to3d(p) {
      const r = turn(p[0] - centre[0], p[1] - centre[1], p[2] - centre[2]);
      const s = view.zoom * 0.8 * Math.min(canvas3d.width, canvas3d.height) / extent;  // px per metre
      return [canvas3d.width / 2 + s * r[0], canvas3d.height / 2 - s * r[1]];
    }

    function floorGrid() {
      const step = 0.5, half = Math.ceil(extent / 2 / step + 1) * step;
      ctx3.strokeStyle = "#ddd";
      ctx3.lineWidth = 1;
      const x0 = Math.floor((centre[0] - half) / step) * step, y0 = Math.floor((centre[1] - half) / step) * step;
      const x1 = centre[0] + half, y1 = centre[1] + half;
      for (let x = x0; x <= x1 + 1e-9; x += step) line(ctx3, to3d([x, y0, floorZ]), to3d([x, y1, floorZ]));
      for (let y = y0; y <= y1 + 1e-9; y += step) line(ctx3, to3d([x0, y, floorZ]), to3d([x1, y, floorZ]));
    }

    function axes() {
      const o = [34, canvas3d.height - 34];
      ["x", "y", "z"].forEach((name, k) => {
        const e = [0, 0, 0];
        e[k] = 1;
        const r = turn(e[0], e[1], e[2]);
        const tip = [o[0] + 24 * r[0], o[1] - 24 * r[1]];
        ctx3.strokeStyle = "#444";
        ctx3.lineWidth = 1;
        line(ctx3, o, tip);
        ctx3.fillStyle = "#444";
        ctx3.fillText(name, tip[0] + 2, tip[1] - 2);
      });
    }

    function draw3d(i) {
      ctx3.clearRect(0, 0, canvas3d.width, canvas3d.height);
      floorGrid();
      axes();
      ctx3.lineWidth = 3;
      ctx3.lineCap = "round";
      segments.view3d = bones(ctx3, data.joints[i], to3d);
      dots(ctx3, data.joints[i], to3d, 3);
    }

    // ------------------------------------------------------------------ one 2D panel per camera (image px)
    const PANEL = 260;  // the longer image side, on screen, px
    const list = document.getElementById("cameras");
    const panels = data.cameras.map((cam) => {
      const box = document.createElement("div");
      box.className = "camera";
      const left = document.createElement("div");
      const title = document.createElement("h3");
      title.textContent = cam.name + " (" + cam.width + " x " + cam.height + " px)";
      const canvas = document.createElement("canvas");
      const scale = PANEL / Math.max(cam.width, cam.height);
      canvas.width = Math.max(1, Math.round(cam.width * scale));
      canvas.height = Math.max(1, Math.round(cam.height * scale));
      left.append(title, canvas);
      const stats = document.createElement("div");
      stats.className = "stats";
      const text = document.createElement("div");
      const curve = document.createElement("div");
      const spark = document.createElement("canvas");
      spark.width = 128;
      spark.height = 46;
      stats.append(text, curve, spark);
      box.append(left, stats);
      list.append(box);
      return {cam: cam, canvas: canvas, ctx: canvas.getContext("2d"), scale: scale, text: text, curve: curve,
              spark: spark};
    });

    function fmt(px) { return px === null ? "n/a" : px.toFixed(1) + " px"; }

    function draw2d(panel, i) {
      const ctx = panel.ctx, w = panel.canvas.width, h = panel.canvas.height;
      const map = (p) => [p[0] * panel.scale, p[1] * panel.scale];
      const seenJ = panel.cam.observed[i], reproj = panel.cam.reprojected[i];
      ctx.clearRect(0, 0, w, h);
      ctx.fillStyle = "#f2f2f2";
      ctx.fillRect(0, 0, w, h);
      ctx.strokeStyle = "#999";
      ctx.lineWidth = 1;
      ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
      ctx.lineCap = "round";
      ctx.strokeStyle = "#777";  // each detection joined to its reprojection: the residual
      seenJ.forEach((p, j) => { if (p !== null && reproj[j] !== null) line(ctx, map(p), map(reproj[j])); });
      ctx.globalAlpha = 0.35;  // detections: wide, faint
      ctx.lineWidth = 5;
      let n = bones(ctx, seenJ, map);
      ctx.globalAlpha = 1;
      dots(ctx, seenJ, map, 2.5);
      ctx.lineWidth = 1.5;  // the 3D reprojected: thin
      n += bones(ctx, reproj, map);
      return n;
    }

    function drawStats(panel, i) {
      const cam = panel.cam;
      const detected = cam.observed[i].filter((p) => p !== null).length;
      panel.text.innerHTML = "";
      [["this frame", fmt(cam.error_px[i])], ["all frames", fmt(cam.mean_error_px)],
       ["joints seen", detected + "/" + data.joint_names.length]].forEach((row) => {
        const div = document.createElement("div");
        const value = document.createElement("b");
        value.textContent = row[1];
        div.append(row[0] + ": ", value);
        panel.text.append(div);
      });
      const ctx = panel.spark.getContext("2d"), w = panel.spark.width, h = panel.spark.height;
      ctx.clearRect(0, 0, w, h);
      ctx.strokeStyle = "#ccc";
      ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
      const top = Math.max(1e-9, ...cam.error_px.map((e) => (e === null ? 0 : e)));
      const x = (k) => (B > 1 ? 2 + (w - 4) * k / (B - 1) : w / 2), y = (e) => h - 3 - (h - 6) * e / top;
      ctx.strokeStyle = "#1f77b4";
      ctx.lineWidth = 1;
      ctx.beginPath();
      let pen = false;
      cam.error_px.forEach((e, k) => {
        if (e === null) { pen = false; return; }
        if (pen) ctx.lineTo(x(k), y(e)); else ctx.moveTo(x(k), y(e));
        pen = true;
      });
      ctx.stroke();
      ctx.strokeStyle = "#d62728";
      line(ctx, [x(i), 0], [x(i), h]);
      panel.curve.textContent = "per frame, max " + fmt(cam.error_px.some((e) => e !== null) ? top : null) + ":";
    }

    // ------------------------------------------------------------------ frames, controls, the marker
    const slider = document.getElementById("frame");
    const label = document.getElementById("frame-label");
    slider.max = String(B - 1);

    function mark() {
      root.setAttribute("data-frame", String(current));
      root.setAttribute("data-rendered", String(segments.cameras.reduce((a, b) => a + b, segments.view3d)));
    }

    function draw(i) {
      current = i;
      draw3d(i);
      panels.forEach((panel, v) => {
        segments.cameras[v] = draw2d(panel, i);
        drawStats(panel, i);
      });
      label.textContent = "frame " + data.frames[i] + " (" + (i + 1) + " of " + B + ")";
      mark();
    }

    slider.addEventListener("input", () => draw(Number(slider.value)));
    const play = document.getElementById("play");
    let timer = null;
    play.addEventListener("click", () => {
      if (timer !== null) {
        clearInterval(timer);
        timer = null;
        play.textContent = "play";
        return;
      }
      play.textContent = "pause";
      timer = setInterval(() => {
        const i = (current + 1) % B;
        slider.value = String(i);
        draw(i);
      }, 100);
    });

    let drag = null;
    canvas3d.addEventListener("pointerdown", (e) => {
      drag = [e.clientX, e.clientY];
      canvas3d.setPointerCapture(e.pointerId);
    });
    canvas3d.addEventListener("pointermove", (e) => {
      if (drag === null) return;
      view.azimuth += (e.clientX - drag[0]) * 0.01;
      view.elevation = Math.max(-1.5, Math.min(1.5, view.elevation + (e.clientY - drag[1]) * 0.01));
      drag = [e.clientX, e.clientY];
      draw3d(current);
      mark();
    });
    canvas3d.addEventListener("pointerup", () => { drag = null; });
    canvas3d.addEventListener("wheel", (e) => {
      e.preventDefault();
      view.zoom = Math.max(0.2, Math.min(8, view.zoom * Math.exp(-e.deltaY * 0.001)));
      draw3d(current);
      mark();
    }, {passive: false});

    const start = /(?:^#|&)frame=(\d+)/.exec(location.hash);  // page.html#frame=K opens at frame index K
    const first = start ? Math.min(B - 1, Number(start[1])) : 0;
    slider.value = String(first);
    draw(first);
  }
})();
"""

_LEGEND = ("3D: world frame, z up, bones coloured by side (left blue, right red); drag to turn, wheel to zoom. "
           "Camera panels (the whole image): wide faint bones and dots are the detections, thin bones the 3D "
           "reprojected through that camera, grey ticks join a detection to its reprojection; beside each, the "
           "mean reprojection error (px) over the joints with both, for this frame and all frames shown, and "
           "its curve over the frames.")


def page_json(data: Mapping[str, Any]) -> str:
    """`data` as strict JSON (NaN refused) safe inside <script>: '<', '>' and '&' escaped as \\u003c ... ."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_page(data: Mapping[str, Any], *, title: str, info: Mapping[str, str], note: str = "") -> str:
    """The whole page (str): `title` and `info` ({label: value}, shown under it) and `note` HTML-escaped; `data`
    (`rigpose.inference.viz.page_data`) embedded as JSON for the script."""
    esc = html.escape
    facts = "".join(f"<span>{esc(k)}: <b>{esc(str(v))}</b></span>" for k, v in info.items())
    return "".join([
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">",
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>\n<body>\n",
        f"<main id=\"{MARKER_ID}\" data-rendered=\"0\">\n<h1>{esc(title)}</h1>\n<p class=\"info\">{facts}</p>\n",
        f"<p class=\"note\">{esc(note)}</p>\n" if note else "",
        f"<p class=\"legend\">{esc(_LEGEND)}</p>\n",
        "<div class=\"controls\"><button id=\"play\" type=\"button\">play</button>",
        "<input id=\"frame\" type=\"range\" min=\"0\" max=\"0\" value=\"0\" step=\"1\"><span id=\"frame-label\"></span>"
        "</div>\n",
        "<div class=\"layout\"><div class=\"view3d\"><canvas id=\"view3d\" width=\"520\" height=\"520\"></canvas>",
        "<div class=\"hint\">drag to turn, wheel to zoom</div></div>\n<div id=\"cameras\" class=\"cameras\"></div>"
        "</div>\n</main>\n",
        f"<script type=\"application/json\" id=\"{DATA_ID}\">{page_json(data)}</script>\n",
        f"<script>{_JS}</script>\n</body></html>\n",
    ])
