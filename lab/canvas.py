"""A drawing canvas for character models: a Streamlit custom component (v2) in plain HTML, CSS and JavaScript.

The user draws with the mouse, a pen or a finger; "Add drawing" sends the picture as a PNG (a one-rerun
trigger value), which the page adds like any upload.
"""

from __future__ import annotations

import base64

import streamlit as st

HTML = """
<div class="pad">
  <canvas width="280" height="280" aria-label="drawing canvas"></canvas>
  <div class="row">
    <button class="add" type="button">Add drawing</button>
    <button class="clear" type="button">Clear</button>
  </div>
</div>
"""

CSS = """
.pad { display: inline-flex; flex-direction: column; gap: 0.4rem; font-family: var(--st-font); }
canvas { background: #fff; border: 1px solid var(--st-border-color); border-radius: var(--st-base-radius);
         touch-action: none; cursor: crosshair; width: 200px; height: 200px; }
.row { display: flex; gap: 0.4rem; }
button { padding: 0.3rem 0.8rem; border-radius: var(--st-button-radius); cursor: pointer;
         border: 1px solid var(--st-border-color); background: var(--st-secondary-background-color);
         color: var(--st-text-color); }
button.add { background: var(--st-primary-color); color: #fff; border: none; }
"""

JS = """
export default function ({ parentElement, setTriggerValue }) {
  const canvas = parentElement.querySelector("canvas");
  const ctx = canvas.getContext("2d");
  const clear = () => { ctx.fillStyle = "#fff"; ctx.fillRect(0, 0, canvas.width, canvas.height); };
  if (!canvas.dataset.ready) { clear(); canvas.dataset.ready = "1"; }
  ctx.lineWidth = 18; ctx.lineCap = "round"; ctx.lineJoin = "round"; ctx.strokeStyle = "#000";
  let drawing = false;
  const point = (e) => {
    const box = canvas.getBoundingClientRect();
    return [(e.clientX - box.left) * canvas.width / box.width, (e.clientY - box.top) * canvas.height / box.height];
  };
  canvas.onpointerdown = (e) => {
    drawing = true; canvas.setPointerCapture(e.pointerId);
    const [x, y] = point(e); ctx.beginPath(); ctx.moveTo(x, y); ctx.lineTo(x + 0.1, y); ctx.stroke();
  };
  canvas.onpointermove = (e) => { if (!drawing) return; const [x, y] = point(e); ctx.lineTo(x, y); ctx.stroke(); };
  canvas.onpointerup = canvas.onpointercancel = () => { drawing = false; };
  parentElement.querySelector("button.clear").onclick = clear;
  parentElement.querySelector("button.add").onclick = () => {
    setTriggerValue("drawing", canvas.toDataURL("image/png"));
    clear();
  };
}
"""

_component = st.components.v2.component("drawing_canvas", html=HTML, css=CSS, js=JS)


def drawing_canvas(key: str) -> bytes | None:
    """Show a canvas; return the PNG bytes of a drawing the user just added (once), else None."""
    result = _component(key=key, on_drawing_change=lambda: None)
    url = getattr(result, "drawing", None)
    if not url or not isinstance(url, str) or not url.startswith("data:image/png;base64,"):
        return None
    return base64.b64decode(url.split(",", 1)[1])
