"""The README's walk-through says what the pages show: each of its numbers is computed here the way the page
computes it (the pages themselves, driven by streamlit.testing, on the built-in example) and looked up in the text."""

from __future__ import annotations

import re
from pathlib import Path

from test_app import button, page, start

README = Path(__file__).resolve().parents[1] / "README.md"


def walk_through() -> str:
    text = README.read_text()
    part = text[text.index("## A 5-minute teaching walk-through") :]
    return re.sub(r"\s+", " ", part[: part.index("\n## ", 3)])  # one line: a phrase may wrap


def test_every_number_of_the_walk_through_is_what_the_pages_show() -> None:
    said = walk_through()
    expected = []
    at = start()  # Home: the built-in example
    classes = at.session_state["classes"]
    [shots] = {len(c.support) for c in classes}
    [queries] = {len(c.query) for c in classes}
    expected.append(f"{len(classes)} classes, {shots} support image each, {queries} held-out query images each")

    at = page(at, "adapt")
    trained = int(at.slider(key=next(s.key for s in at.slider if s.label == "Steps per Run")).value)
    for _ in range(trained):
        button(at, "Step").click().run()
    records = at.session_state["runs"]["maml"]["records"]
    summary = next(m.value for m in at.markdown if m.value.startswith(f"Step {trained}:"))
    assert f"support loss {records[trained]['support_loss']:.3f}" in summary  # the numbers below are the screen's
    acc = [100 * r["query_acc"] for r in records]
    loss = [r["support_loss"] for r in records]
    expected += [
        f"Step 0 is chance ({acc[0]:.0f}%",
        f"After one step query accuracy jumps to {acc[1]:.1f}%",
        f"({loss[0]:.3f} → {loss[1]:.3f} → {loss[2]:.3f} → … {loss[trained]:.3f} at step {trained}, the steps the "
        "model was meta-trained for)",
    ]
    moved = records[trained]["shift"]
    blocks = [v for k, v in moved.items() if k.startswith("blocks.")]
    head = moved["head"]
    expected.append(f"The head moves most ({head:.3f} after {trained} steps); each conv block")
    expected.append(f"{head / max(blocks):.1f}–{head / min(blocks):.1f}x less")
    assert head > max(moved[k] for k in moved if k != "head")

    button(at, "Compare (").click().run()
    compared = at.session_state["comparison"]
    scratch = [100 * r["query_acc"] for r in compared["random"]]
    meta = 100 * compared["maml"][-1]["query_acc"]
    expected.append(
        f"{scratch[0]:.0f}% → {scratch[1]:.0f}% → … {scratch[-1]:.0f}% after {len(scratch) - 1} steps, against "
        f"{meta:.0f}% from the meta-learned one"
    )

    at = page(at, "features")
    info = next(i.value for i in at.info if "of their length" in i.value)
    expected.append(re.search(r"moved (?:only )?(\S+% of their length)", info).group(1))
    silhouette = [m.value for m in at.metric if m.label == "Silhouette"]
    expected.append(f"silhouette {silhouette[0]} → {silhouette[1]}")
    tally = next(c.value for c in at.caption if c.value.startswith("Of "))
    total, right = re.match(r"Of (\d+) images, (\d+) went from wrong", tally).groups()
    expected.append(f"{right} of the {total} images now right")
    assert "no class (20% each)" in " ".join(at.dataframe[0].value["before"])
    expected.append('"no class (20% each)"')

    missing = [phrase for phrase in expected if phrase not in said]
    assert not missing, f"the README's walk-through does not say what the pages show: {missing}"
