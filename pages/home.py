import streamlit as st

from lab.examples import example_mismatch, load_example, open_linked_example
from lab.models import MODELS, meta_trained, model_path, shared_model
from lab.sidebar import sidebar
from lab.task import session_classes
from lab.text import adapts_plainly
from metacore.errors import MetacoreError
from metacore.examples import sample_characters_task

sidebar()


def shipped_model_picked() -> bool:
    """Whether the sidebar's model is one the lab ships (not meta-trained here, not uploaded)."""
    return model_path() in {str(path) for path in MODELS.values()}


st.title("🧪 Few-shot learning lab")
st.markdown(
    f"Give a {'**meta-trained** ' if meta_trained() else ''}network a handful of images per class and watch it "
    "**adapt step by step** with MAML. Then see what its features learned, and classify new images."
)

try:
    learner, meta = shared_model()
except MetacoreError as exc:
    st.error(f"The shipped model could not be loaded: {exc}")
    st.stop()

if "example" in st.query_params and st.session_state.get("followed_link") != dict(st.query_params):
    st.session_state.followed_link = dict(st.query_params)  # once: the page reruns with the same address
    if problem := open_linked_example(st.query_params.to_dict()):
        st.warning(problem, icon="🔗")
if "classes" not in st.session_state or not any(c.support for c in st.session_state.classes):
    load_example(sample_characters_task(way=5, shot=1, query=5, seed=0), "Omniglot characters 5-way 1-shot")

classes = session_classes()
if mismatch := example_mismatch():
    st.warning(mismatch, icon="⚠️")
left, right = st.columns([3, 2])
with left:
    st.subheader("1 · Your task")
    label = st.session_state.get("example")
    st.write(
        f"**{len(classes)} classes**, {sum(len(c.support) for c in classes)} support and "
        f"{sum(len(c.query) for c in classes)} query images" + (f" (example: {label})." if label else ".")
    )
    for c in classes:
        cols = st.columns([2, 8])
        cols[0].markdown(f"**{c.name}**")
        cols[1].image([i.thumbnail(48) for i in c.support + c.query][:12], width=40)
    st.page_link("pages/build.py", label="Change the task: upload, photograph or pick an example", icon="🧩")
with right:
    st.subheader("2 · Adapt")
    st.write(
        f"By default {'the shipped' if shipped_model_picked() else 'the picked'} model adapts "
        f"{adapts_plainly(learner)}."
        + (" Its head starts at zero: step 0 is chance, and what it gets right after the steps, it learned in them."
           if learner.head == "zero" else "")
        + ("" if meta_trained() else " Nothing in this model is meta-trained: its features come from ImageNet "
           "pre-training (Learn says why); meta-learning is on the Characters model and the Meta-train page.")
    )  # fmt: skip
    st.page_link("pages/adapt.py", label="Watch it adapt", icon="📉")
    st.subheader("3 · Look")
    st.page_link("pages/features.py", label="t-SNE of the features, before and after", icon="🗺️")
    st.page_link("pages/classify.py", label="Classify new images", icon="🔎")
    st.page_link("pages/learn.py", label="What is MAML?", icon="📚")
