import pandas as pd
import plotly.express as px
import streamlit as st

import lab
from canvas import drawing_canvas
from metacore.features import predict_proba
from metacore.isolation import compute_slot

lab.sidebar()
st.title("🔎 Classify new images")

_, tensors = lab.require_task()
shipped, _ = lab.shared_model()
learner, params, caption = lab.chosen_adaptation(tensors)
st.caption(f"Using {caption}.")

counter = st.session_state.setdefault("classify_upload", 0)
left, right = st.columns(2)
files = left.file_uploader("Images to classify", accept_multiple_files=True, key=f"classify_{counter}")
photo = right.camera_input("…or take a photo", key="classify_cam") if right.toggle("Camera") else None
drawing = None
if lab.takes_drawings() and right.toggle("Draw"):
    with right:
        drawing = drawing_canvas(key="classify_draw")
new = [(f.name, f.getvalue()) for f in files or []] + ([("photo", photo.getvalue())] if photo is not None else [])
new += [("drawing", drawing)] if drawing else []
pending: list = st.session_state.setdefault("to_classify", [])
if new:
    st.session_state.classify_problems = lab.add_uploads(pending, new, lab.MAX_TASK_IMAGES - len(pending))
    st.session_state.classify_upload += 1
    st.rerun()
for problem in st.session_state.get("classify_problems", []):
    st.error(problem, icon="🚫")
if pending and st.button("Clear", icon="🗑️"):
    pending.clear()
    st.rerun()
if not pending:
    st.info("Upload or photograph images: each gets the adapted model's prediction.")
    st.stop()

batch = lab.item_inputs(pending, shipped.backbone.input_spec)
with compute_slot():
    probs = predict_proba(learner, params, batch).numpy()
for item, p in zip(pending, probs):
    with st.container(border=True):
        a, b = st.columns([1, 4])
        a.image(item.thumbnail(128), caption=item.name)
        best = int(p.argmax())
        b.markdown(f"**{tensors.names[best]}** — {100 * p[best]:.1f}% confident")
        frame = pd.DataFrame({"class": tensors.names, "probability": p})
        fig = px.bar(frame, x="probability", y="class", orientation="h", range_x=[0, 1], height=60 + 22 * len(p))
        fig.update_layout(margin={"t": 5, "b": 5})
        b.plotly_chart(fig, key=f"bars_{id(item)}")
