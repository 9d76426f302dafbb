import pandas as pd
import plotly.express as px
import streamlit as st
from streamlit_webrtc import WebRtcMode, webrtc_streamer

from lab.canvas import drawing_canvas
from lab.export import exported_zip
from lab.live_camera import LiveClassifier, live_classifier
from lab.memo import remembered
from lab.models import picked_yours, shared_model, takes_drawings, unsure_threshold
from lab.runs import chosen_adaptation
from lab.sidebar import sidebar
from lab.task import MAX_TASK_IMAGES, add_uploads, item_inputs, require_task, task_signature
from metacore.errors import MetacoreError
from metacore.features import predict_proba
from metacore.isolation import compute_slot
from metacore.openset import novelty, task_threshold

sidebar()
st.title("🔎 Classify new images")

_, tensors = require_task()
shipped, _ = shared_model()
learner, params, caption = chosen_adaptation(tensors)
st.caption(f"Using {caption}.")
adaptation = (task_signature(tensors), caption, id(params))


def none_of_these() -> dict | None:
    """The "none of these?" threshold: the model card's (chosen on held-out classes), else one measured on the task
    itself (each support image left out); None when the task is too small for that."""
    card = unsure_threshold() if learner is shipped else None
    with compute_slot():
        return card or task_threshold(learner, params, tensors.support_x, tensors.support_y)


unsure = remembered("unsure", adaptation, none_of_these, keep=params)
with st.expander("Export this adapted model: it runs anywhere, without this lab", icon="📦"):
    if picked_yours():
        st.caption("Your own model: export the network itself (torch.export or ONNX) from where it was made.")
    else:
        st.caption("A zip: model.onnx (pixels in, class probabilities out), predict.py (needs only onnxruntime, "
                   "numpy and pillow) and model.pt2 for PyTorch.")  # fmt: skip
        made = st.session_state.get("export_zip")
        if st.button("Prepare the export", icon="⚙️"):
            with st.spinner("Exporting the adapted model (a few seconds; with the ImageNet body, ~15 s) ..."):
                made = st.session_state.export_zip = (adaptation, exported_zip(learner, params, tensors.names))
        if made and made[0] == adaptation:
            st.download_button("Download few_shot_model.zip", made[1], "few_shot_model.zip", icon="⬇️")


@st.fragment(run_every=0.2)  # five times a second, this part only
def live_bars(classifier: LiveClassifier) -> None:
    result = classifier.latest
    if result is None:
        st.info("Press **START** beside the video (allow the camera): the bars appear with the first frame.")
        return
    best = int(result.probabilities.argmax())
    st.markdown("**None of these?**" if result.unsure else f"**{classifier.classes[best]}**")
    for name, p in zip(classifier.classes, result.probabilities):
        st.progress(float(p), text=f"{name}: {100 * p:.0f}%")
    per_second, latency = classifier.rate()
    st.caption(f"{per_second:.1f} frames classified a second; {latency:.0f} ms from a frame to its result.")


counter = st.session_state.setdefault("classify_upload", 0)
left, right = st.columns(2)
files = left.file_uploader("Images to classify", accept_multiple_files=True, key=f"classify_{counter}")
live = right.toggle("Live camera", key="live_on", help="every frame classified as it comes, bars updating live")
photo = right.camera_input("…or take a photo", key="classify_cam") if right.toggle("Camera") else None
drawing = None
if takes_drawings() and right.toggle("Draw"):
    with right:
        drawing = drawing_canvas(key="classify_draw")
if live:
    classifier = remembered(
        "live_classifier",
        adaptation,
        lambda: live_classifier(learner, params, tensors.names, tensors.support_x, tensors.support_y,
                                unsure and unsure["threshold"], takes_drawings()),
        keep=params,
    )  # fmt: skip
    camera, bars = st.columns([3, 2])
    with camera:
        webrtc_streamer(
            key="live_camera",
            mode=WebRtcMode.SENDRECV,  # the video comes back with the prediction written on it
            video_frame_callback=classifier.on_frame,
            media_stream_constraints={"video": {"width": {"ideal": 640}}, "audio": False},
            rtc_configuration={"iceServers": []},  # browser and server on one network: no outside server
        )
        st.caption("Hold an object (a drawing, for the character model) to the camera: each frame is classified "
                   "by the adapted model, and the bars follow.")  # fmt: skip
    with bars:
        live_bars(classifier)
new = [(f.name, f.getvalue()) for f in files or []] + ([("photo", photo.getvalue())] if photo is not None else [])
new += [("drawing", drawing)] if drawing else []
pending: list = st.session_state.setdefault("to_classify", [])
if new:
    st.session_state.classify_problems = add_uploads(pending, new, MAX_TASK_IMAGES - len(pending))
    st.session_state.classify_upload += 1
    st.rerun()
for problem in st.session_state.get("classify_problems", []):
    st.error(problem, icon="🚫")
if not pending:
    st.info("Upload or photograph images: each gets the adapted model's prediction.")
    st.stop()

batch = item_inputs(pending, shipped.backbone.input_spec)
try:
    with compute_slot():
        probs = predict_proba(learner, params, batch).numpy()
        if unsure:
            way = len(tensors.names)
            scores = novelty(learner, params, tensors.support_x, tensors.support_y, batch, way)
except MetacoreError as exc:  # a diverged adaptation picked on the Adapt page: said, the images kept
    st.error(f"{str(exc)[0].upper()}{str(exc)[1:]}: pick an earlier step or a smaller lr on the Adapt page.")
    st.stop()
if unsure:
    st.caption(
        f"An image much farther from its nearest class than the task's classes are from each other (over "
        f"{unsure['threshold']:.2f} times, in feature space) is marked **none of these?**. "
        + (
            "That threshold was chosen on held-out classes; on other classes it"
            if "measured on this task" not in unsure["task"]
            else "That threshold keeps 95% of this task's own support images when each is left out in turn; here it"
        )
        + f" kept {unsure['in_task_kept']:.0f}% of the images of a task's own classes and flagged "
        f"{unsure['out_of_task_flagged']:.0f}% of images from outside the task ({unsure['task']})."
    )
else:  # never silently off
    st.caption(
        "**None of these?** is off for this task: this model has no threshold measured on held-out classes, and "
        "the task is too small to measure one on itself (that needs 3 classes and a class with 2 support images)."
    )
heading, clear = st.columns([4, 1])
heading.subheader(f"{len(pending)} {'image' if len(pending) == 1 else 'images'}")
if clear.button("Remove all images", icon="🗑️"):  # named apart from the drawing canvas's own "Clear"
    pending.clear()
    st.rerun()
cards = st.columns(3)  # three results a row: a class's worth of images fits on one screen
for index, (item, p) in enumerate(zip(pending, probs)):
    with cards[index % 3].container(border=True):
        a, b = st.columns([1, 3])
        a.image(item.thumbnail(96), caption=item.name[:20])
        best = int(p.argmax())
        if unsure and scores[index] > unsure["threshold"]:
            b.markdown(
                f"**None of these?** Far from every class ({scores[index]:.2f} times the distance between "
                f"classes). Nearest: {tensors.names[best]}, {100 * p[best]:.0f}%."
            )
        else:
            b.markdown(f"**{tensors.names[best]}**, {100 * p[best]:.1f}% confident")
        frame = pd.DataFrame({"class": tensors.names, "probability": p})
        fig = px.bar(frame, x="probability", y="class", orientation="h", range_x=[0, 1], height=30 + 16 * len(p))
        fig.update_layout(margin={"t": 0, "b": 0, "l": 0, "r": 0}, yaxis={"autorange": "reversed", "title": ""},
                          xaxis={"title": "", "showticklabels": False})  # fmt: skip
        st.plotly_chart(fig, key=f"bars_{id(item)}", config={"displayModeBar": False})
