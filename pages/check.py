import json
import time

import streamlit as st

from lab.checks import CheckRun, class_folder_sets, unpack_zip
from lab.examples import data_root
from lab.models import model_label, model_path, picked_yours
from lab.sidebar import sidebar
from lab.yours import MAX_MB, baselines, checkpoint_model, describe, loaded, save_upload
from metacore.check import overlap_warnings
from metacore.errors import MetacoreError
from metacore.report import accuracy_figure, curve_figure, map_figure, render, rows
from metacore.yours import load_features

sidebar()
st.title("🩺 Check a model")
st.write(
    "Do a network's features separate classes it never saw, from 1 or 5 examples, better than a baseline? Upload "
    "your model in the sidebar (**Your model**), or check one of the lab's. The check draws 5-way 1-shot and 5-shot "
    "episodes from a folder of class folders and measures them by nearest class mean and by a zero head adapting "
    "on the frozen features, next to raw pixels, the same architecture at random initialisation (when known) and "
    "the shipped photo model, **on the same images and episodes**."
)

entry = picked_yours()
try:
    model = loaded(entry) if entry else checkpoint_model(model_path())
except MetacoreError as exc:
    st.error(str(exc), icon="🚫")
    st.stop()
if st.session_state.get("ck_src") != "A features file (no model)":
    st.caption(f"Model: **{model_label()}** — {describe(model)}.")

sets = class_folder_sets(data_root())
left, right = st.columns(2)
SOURCES = ["From the data root", "Upload a .zip of class folders", "A features file (no model)"]
source = left.radio("Images", SOURCES, horizontal=True, key="ck_src", persist_state="session")
folder, label, table = None, "", None
if source == SOURCES[0]:
    if sets:
        name = left.selectbox("Folder of class folders", list(sets), key="ck_set", persist_state="session")
        folder, label = sets[name], f"{name} (data root)"
    else:
        left.info(f"No folder of class folders under the data root ({data_root()}). Upload a .zip instead.")
elif source == SOURCES[2]:
    upload = left.file_uploader(
        "Features with their labels: .csv (a 'label' column, the rest numbers) or .npz ('features', 'labels')",
        type=["csv", "npz"],
        key="ck_features",
        max_upload_size=MAX_MB,
    )
    if upload is not None:
        try:
            table = load_features(save_upload(upload.name, upload.getvalue()))
            label = upload.name
            left.caption(
                f"{len(table.labels):,} rows of {table.features.shape[1]} features, {len(table.classes)} classes."
            )
        except MetacoreError as exc:
            left.error(str(exc), icon="🚫")
else:
    upload = left.file_uploader(
        "A .zip with one folder of images per class", type=["zip"], key="ck_zip", max_upload_size=2048
    )
    if upload is not None:
        try:
            folder = st.session_state.setdefault("ck_unpacked", {}).get(upload.file_id)
            folder = folder or unpack_zip(upload.name, upload.getvalue())
            st.session_state.ck_unpacked[upload.file_id] = folder
            label = upload.name
        except MetacoreError as exc:
            left.error(str(exc), icon="🚫")
per_class = right.select_slider(
    "Images per class (at most)",
    [10, 20, 50, 100, 200, 500, 1000, "all"],
    100,
    key="ck_per_class",
    persist_state="session",
)
episodes = right.select_slider(
    "Episodes per setting", [100, 200, 600, 1000, 2000], 600, key="ck_episodes", persist_state="session"
)
with_baselines = right.toggle(
    "Baselines (random init, the photo model)", True, key="ck_baselines", persist_state="session"
)

run: CheckRun | None = st.session_state.get("check_run")
busy = run is not None and run.running
if st.button("Run the check", icon="🩺", type="primary", disabled=busy or (folder is None and table is None)):
    try:
        chosen = baselines(model) if with_baselines and table is None else {}
    except MetacoreError as exc:
        st.error(f"Baselines could not be loaded: {exc}", icon="🚫")
        chosen = {}
    limit = None if per_class == "all" else int(per_class)
    data = (table.features, table.labels, table.classes) if table is not None else folder
    run = st.session_state.check_run = CheckRun(model, data, chosen, int(episodes), limit, label).start()
    st.rerun()


@st.fragment(run_every=1.0)
def progress(current: CheckRun) -> None:
    """Redraws each second while the check runs; reruns the whole page when it ends."""
    if not current.running:
        st.rerun()
    eta = current.eta()
    text = f"{current.stage} ({current.done:,} of {current.total:,})" if current.total else current.stage
    text += f", about {eta:.0f} s left" if eta is not None and eta >= 2 else ""
    st.progress(current.done / current.total if current.total else 0.0, text=text)


if busy:
    progress(run)
if run is None or run.running:
    st.stop()
if run.error:
    st.error(run.error, icon="🚫")
    st.stop()

report = run.report
data = report["data"]
st.subheader("Result")
st.write(
    f"**{data['images']:,} {'rows' if report['model'].get('kind') == 'features' else 'images'}** of "
    f"{data['classes']} classes from **{run.label}**, {report['episodes']} "
    f"episodes per setting, in {report['seconds']:.0f} s."
    + (f" {len(report['skipped_files'])} unreadable files were left out." if report.get("skipped_files") else "")
)
for warning in overlap_warnings(report):  # a row on classes its model meta-trained on is not a novel-class row
    st.warning(warning + ".", icon="⚠️")
table = []
for label, result in rows(report):
    row = {"features": label}
    for setting in ("5w1s", "5w5s"):
        cell = result["fewshot"][setting]
        if "skipped" not in cell:
            row[f"{setting} mean %"] = f"{cell['accuracy']:.1f} ± {cell['ci95']:.1f}"
            row[f"{setting} zero head %"] = f"{cell['zero_head']['accuracy']:.1f} ± {cell['zero_head']['ci95']:.1f}"
    row |= {
        "linear probe %": result["linear_probe"].get("accuracy"),
        "k-NN p@1 %": result["knn"]["p@1"],
        "k-NN p@5 %": result["knn"]["p@5"],
        "silhouette": result["silhouette"],
    }
    table.append(row)
st.dataframe(table, hide_index=True, width="stretch")
st.plotly_chart(accuracy_figure(report), key="ck_acc")
st.plotly_chart(curve_figure(report), key="ck_curve")
figure = map_figure(report)
if figure is not None:
    st.plotly_chart(figure, key="ck_map")
probe = report["linear_probe"]
if "per_class_recall" in probe:
    left, right = st.columns(2)
    left.markdown("**Per-class recall** (linear probe, held-out half)")
    left.dataframe(
        sorted(probe["per_class_recall"].items(), key=lambda kv: kv[1]),
        hide_index=True,
        column_config={"0": "class", "1": "recall %"},
    )
    right.markdown("**Most confused pairs**")
    right.dataframe(
        [{"classes": " / ".join(p["classes"]), "confused": p["confused"]} for p in probe["most_confused"]],
        hide_index=True,
    )
stamp = time.strftime("%Y%m%d-%H%M")
st.download_button(
    "Download the report (HTML, opens offline)", render(report), f"check-{stamp}.html", "text/html", icon="📄"
)
summary = {k: v for k, v in report.items() if k not in ("map", "files", "labels")}
st.download_button(
    "Download the numbers (JSON)", json.dumps(summary, indent=1), f"check-{stamp}.json", "application/json", icon="🔢"
)
