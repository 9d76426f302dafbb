import streamlit as st
from streamlit_webrtc import WebRtcMode, webrtc_streamer

from lab.canvas import drawing_canvas
from lab.examples import data_root, example_mismatch, listed_classes, load_example
from lab.live_camera import BurstRecorder
from lab.models import takes_drawings
from lab.runs import reset_runs
from lab.saved_tasks import open_task, saved_task_zip
from lab.sidebar import sidebar
from lab.task import (
    MAX_TASK_IMAGES,
    TaskClass,
    add_uploads,
    image_to_png,
    session_classes,
    task_problems,
    task_size,
)
from metacore.errors import MetacoreError
from metacore.examples import (
    OMNIGLOT_EXAMPLES,
    PHOTO_EXAMPLE_NOTES,
    dataset_task,
    digits_task,
    download_omniglot,
    omniglot_available,
    omniglot_task,
    photo_examples_available,
    sample_characters_task,
)

sidebar()
st.title("🧩 Build a task")
st.write(
    "A task is 2 to 20 classes, each with a few **support** images the model adapts to, and optionally "
    "**query** images held out to measure accuracy."
)

classes = session_classes()
drawable = takes_drawings()


def burst_capture(classes: list[TaskClass]) -> None:
    """Hold an object to the camera and turn it: frames go into the chosen class at the chosen rate."""
    recorder: BurstRecorder = st.session_state.setdefault("burst", BurstRecorder())
    with st.container(border=True):
        video, controls = st.columns([3, 2])
        with video:
            webrtc_streamer(
                key="burst_camera",
                mode=WebRtcMode.SENDRECV,
                video_frame_callback=recorder.on_frame,
                media_stream_constraints={"video": {"width": {"ideal": 640}}, "audio": False},
                rtc_configuration={"iceServers": []},  # browser and server on one network: no outside server
            )
        target = controls.selectbox("Into class", range(len(classes)), format_func=lambda i: classes[i].name,
                                    key="burst_class")  # fmt: skip
        part = controls.radio("As", ["support", "query"], horizontal=True, key="burst_part", persist_state="session")
        rate = controls.slider("Frames a second", 1, 10, 5, key="burst_rate", persist_state="session")
        limit = controls.slider("At most", 5, 50, 30, 5, key="burst_limit", persist_state="session")
        start, stop = controls.columns(2)
        if start.button("Record", icon="🔴", disabled=recorder.recording, help="START the camera first"):
            st.session_state.pop("burst_added", None)
            recorder.start(rate, limit, drawable)
        if stop.button("Stop", icon="⏹️", disabled=not recorder.recording):
            recorder.stop()
        with controls:
            burst_progress(recorder, classes, target, part)


@st.fragment(run_every=0.3)
def burst_progress(recorder: BurstRecorder, classes: list[TaskClass], target: int, part: str) -> None:
    if recorder.recording:
        st.progress(
            len(recorder.frames) / recorder.limit, text=f"Recording: {len(recorder.frames)} of {recorder.limit}"
        )
        return
    frames = recorder.take()
    if frames:  # recording has just stopped: the frames join the class, each an image like any upload
        items = getattr(classes[min(target, len(classes) - 1)], part)
        start = len(items)
        uploads = [(f"frame {start + i + 1}", image_to_png(frame)) for i, frame in enumerate(frames)]
        st.session_state.burst_messages = add_uploads(items, uploads, MAX_TASK_IMAGES - task_size(classes))
        st.session_state.burst_added = f"Added {len(items) - start} frames to {classes[target].name} ({part})."
        reset_runs()
        st.rerun()  # the whole page: the class shows its new images
    for message in st.session_state.get("burst_messages", []):
        st.error(message, icon="🚫")
    if added := st.session_state.get("burst_added"):
        st.success(added)


messages: dict = st.session_state.setdefault("upload_messages", {})

with st.expander("Start from an example", expanded=not any(c.support for c in classes)):
    cols = st.columns(3)
    way = cols[0].slider("Classes (N)", 2, 20, 5, key="ex_way", persist_state="session")
    shot = cols[1].slider("Support images per class (K)", 1, 10, 1, key="ex_shot", persist_state="session")
    query = cols[2].slider("Query images per class", 0, 10, 5, key="ex_query", persist_state="session")
    left, right = st.columns(2)
    if left.button(
        "Omniglot characters (built in)",
        icon="🔤",
        disabled=way > 10 or shot + query > 6,
        help="10 characters from alphabets the model never saw, 6 drawings each, bundled with the lab",
    ):
        load_example(
            sample_characters_task(way, shot, query, seed=st.session_state.get("ex_seed", 0)),
            f"Omniglot characters {way}-way {shot}-shot",
        )
        st.session_state.ex_seed = st.session_state.get("ex_seed", 0) + 1
        st.rerun()
    if left.button(
        "Handwritten digits (built in)",
        icon="✍️",
        disabled=way > 10,
        help="scikit-learn's bundled 8x8 digits: 10 classes, no download",
    ):
        load_example(
            digits_task(way, shot, query, seed=st.session_state.get("ex_seed", 0)), f"digits {way}-way {shot}-shot"
        )
        st.session_state.ex_seed = st.session_state.get("ex_seed", 0) + 1
        st.rerun()
    root = data_root()
    if omniglot_available(root):
        if right.button("Omniglot characters (all evaluation alphabets)", icon="🔣"):
            seed = st.session_state.get("ex_seed", 0)
            try:
                listing = listed_classes(str(root), *OMNIGLOT_EXAMPLES)
                task = omniglot_task(root, way, shot, query, seed, listing)
                load_example(task, f"Omniglot {way}-way {shot}-shot")
            except MetacoreError as exc:
                st.error(str(exc))
            else:
                st.session_state.ex_seed = seed + 1
                st.rerun()
    else:
        right.caption(f"Omniglot not found under `{root}` (set METACORE_DATA_ROOT).")
        if right.button("Download Omniglot with torchvision", icon="⬇️"):
            with st.status("Downloading Omniglot ...") as status:
                try:
                    download_omniglot(root)
                    status.update(label="Omniglot downloaded", state="complete")
                except MetacoreError as exc:
                    status.update(label="Download failed", state="error")
                    st.error(str(exc))
    photos = photo_examples_available(root)
    if photos:
        st.caption("Photo tasks (pick the photo model in the sidebar for these):")
        for column, (label, (dataset, split)) in zip(st.columns(len(photos)), photos.items()):
            if column.button(label, icon="📷", help=PHOTO_EXAMPLE_NOTES.get(label)):
                seed = st.session_state.get("ex_seed", 0)
                try:
                    listing = listed_classes(str(root), dataset, split)
                    task = dataset_task(root, dataset, split, way, shot, query, seed, listing)
                except MetacoreError as exc:
                    st.error(str(exc))
                else:
                    load_example(task, f"{label} {way}-way {shot}-shot", photos=True)
                    st.session_state.ex_seed = seed + 1
                    st.rerun()

if mismatch := example_mismatch():
    st.warning(mismatch, icon="⚠️")

top = st.columns([1, 1, 4])
if top[0].button("Add a class", icon="➕", disabled=len(classes) >= 20):
    classes.append(TaskClass(f"class {len(classes) + 1}"))
    reset_runs()
    st.rerun()
if top[1].button("Clear all", icon="🗑️"):
    st.session_state.classes = [TaskClass("class 1"), TaskClass("class 2")]
    st.session_state.pop("example", None)
    st.session_state.pop("example_photos", None)
    reset_runs()
    st.rerun()
if top[2].toggle("Burst capture from the camera", key="burst_on", help="record frames into a class, e.g. 5 a second"):
    burst_capture(classes)

for index, cls in enumerate(list(classes)):
    with st.container(border=True):
        head = st.columns([4, 1])
        new_name = head[0].text_input("Class name", cls.name, key=f"name_{cls.uid}", max_chars=40)
        if new_name != cls.name:
            cls.name = new_name
        if head[1].button("Remove class", key=f"remove_{cls.uid}", disabled=len(classes) <= 2):
            classes.pop(index)
            reset_runs()
            st.rerun()
        for part in ("support", "query"):
            items = getattr(cls, part)
            counter = f"upload_{part}_{cls.uid}"
            st.session_state.setdefault(counter, 0)
            cols = st.columns([3, 2])
            files = cols[0].file_uploader(
                f"{part.capitalize()} images" + (" (held out, optional)" if part == "query" else ""),
                accept_multiple_files=True,
                key=f"{counter}_{st.session_state[counter]}",
            )
            photo = drawing = None
            if cols[1].toggle("Camera", key=f"cam_on_{part}_{cls.uid}"):
                photo = cols[1].camera_input("Take a photo", key=f"cam_{part}_{cls.uid}")
            if drawable and cols[1].toggle("Draw", key=f"draw_on_{part}_{cls.uid}"):
                with cols[1]:
                    drawing = drawing_canvas(key=f"draw_{part}_{cls.uid}")
            new = [(f.name, f.getvalue()) for f in files or []]
            if drawing:
                new.append((f"drawing {len(items) + 1}", drawing))
            if photo is not None and st.session_state.get(f"cam_last_{part}_{cls.uid}") != photo.file_id:
                st.session_state[f"cam_last_{part}_{cls.uid}"] = photo.file_id
                new.append((f"photo {len(items) + 1}", photo.getvalue()))
            if new:
                messages[(cls.uid, part)] = add_uploads(items, new, MAX_TASK_IMAGES - task_size(classes))
                st.session_state[counter] += 1  # a fresh, empty uploader: files are added once
                reset_runs()
                st.rerun()
            for problem in messages.get((cls.uid, part), []):
                st.error(problem, icon="🚫")
            if items:
                grid = st.columns(10)
                for i, item in enumerate(list(items)):
                    with grid[i % 10]:
                        st.image(item.thumbnail(80), caption=item.name[:14], width=80)
                        if st.button("✕", key=f"del_{part}_{cls.uid}_{i}", help=f"remove {item.name}"):
                            items.pop(i)
                            reset_runs()
                            st.rerun()

problems = task_problems(classes)
for problem in problems:
    st.warning(problem)
if not problems:
    st.success(f"Ready: {len(classes)}-way task with {sum(len(c.support) for c in classes)} support images.")
    st.page_link("pages/adapt.py", label="Adapt to it", icon="📉")

with st.expander("Save this task, or open a saved one", icon="💾"):
    left, right = st.columns(2)
    left.download_button(
        "Save this task (.zip)",
        saved_task_zip(),  # the images as PNG, the class names, the model and its settings; made once per change
        "few_shot_task.zip",
        "application/zip",
        icon="⬇️",
        disabled=not any(c.support or c.query for c in classes),
        on_click="ignore",
    )
    left.caption("Open it again next week, on this server or another: the same images, names, model and settings.")
    opened_count = st.session_state.setdefault("task_upload", 0)
    saved = right.file_uploader("Open a saved task (.zip)", type=["zip"], key=f"task_upload_{opened_count}")
    if saved is not None:
        st.session_state.task_upload += 1  # a fresh uploader: the file is opened once
        try:
            st.session_state.task_opened = ("success", open_task(saved.getvalue(), saved.name))
        except MetacoreError as exc:  # the task in the session stays as it was
            st.session_state.task_opened = ("error", f"{saved.name}: {exc}.")
        st.rerun()
    if opened := st.session_state.get("task_opened"):
        (right.success if opened[0] == "success" else right.error)(opened[1])
