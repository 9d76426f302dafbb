"""Live camera classification: each frame the browser streams (WebRTC, streamlit-webrtc) is classified by the
task's adapted model in the stream's own thread, and the page's bars read the latest result.

Frames arrive at the camera's rate; one is classified when it came MIN_INTERVAL_S or more after the last one
classified (the others pass through with the latest answer written on them), so a slow model skips frames instead
of falling behind. The work holds the server's compute slot, as a Step does, so other sessions keep their turn.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageOps

from metacore.algorithms import MAML
from metacore.bodies import model_inputs
from metacore.images import preprocess
from metacore.isolation import compute_slot
from metacore.models import Params, linear_head
from metacore.openset import feature_novelty

MIN_INTERVAL_S = 0.08  # at most ~12 classifications a second per session (a 10 fps camera: every frame)
FRAME_SIDE = 320  # frames are shrunk to this longer side first (a 720p frame costs the decoder, not the model)


def as_drawing(image: Image.Image) -> Image.Image:
    """A photographed drawing as the canvas gives one: black strokes on white at the frame's own threshold (midway
    between its darkest and its median level, so paper's shading does not become strokes), cropped to the strokes
    with a margin and made square, as Omniglot frames its characters."""
    grey = ImageOps.autocontrast(image.convert("L"), cutoff=1)
    levels = np.asarray(grey)
    cut = (int(np.percentile(levels, 1)) + int(np.median(levels))) / 2
    strokes = levels <= cut
    if not strokes.any() or strokes.mean() > 0.5:  # a blank frame, or no paper in view: as it is
        return grey.point(lambda v: 255 if v > cut else 0)
    rows, cols = np.flatnonzero(strokes.any(1)), np.flatnonzero(strokes.any(0))
    side = int(1.4 * max(rows[-1] - rows[0], cols[-1] - cols[0], 8))
    centre_y, centre_x = (rows[0] + rows[-1]) // 2, (cols[0] + cols[-1]) // 2
    sheet = Image.new("L", (side, side), 255)
    ink = Image.fromarray(np.where(strokes, 0, 255).astype(np.uint8))
    sheet.paste(ink, (side // 2 - centre_x, side // 2 - centre_y))
    return sheet


@dataclass
class LiveResult:
    probabilities: np.ndarray
    unsure: bool
    frame_time: float  # when its frame arrived (time.monotonic)
    done_time: float


@dataclass
class LiveClassifier:
    """One session's live view: its adapted model, and the latest results its frames gave."""

    learner: MAML
    params: Params
    classes: list[str]
    support_features: torch.Tensor
    support_labels: torch.Tensor
    threshold: float | None  # "none of these?" (novelty above it), None: off
    drawings: bool  # the character model: binarise each frame like the canvas
    latest: LiveResult | None = None
    done: deque = field(default_factory=lambda: deque(maxlen=50))  # recent results' (frame time, done time)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def classify(self, image: Image.Image, arrived: float) -> LiveResult:
        spec = self.learner.backbone.input_spec
        image.thumbnail((FRAME_SIDE, FRAME_SIDE))
        picture = as_drawing(image) if self.drawings else image
        with torch.no_grad(), compute_slot():
            x = model_inputs(preprocess(picture, spec)[None], spec).to(self.learner.backbone.device)
            features = self.learner.backbone.features(self.params, x)
            probabilities = linear_head(features, self.params).softmax(-1)[0].cpu().numpy()
            novelty = feature_novelty(self.support_features, self.support_labels, features.cpu())
        unsure = self.threshold is not None and float(novelty[0]) > self.threshold
        result = LiveResult(probabilities, unsure, arrived, time.monotonic())
        with self._lock:
            self.latest = result
            self.done.append((arrived, result.done_time))
        return result

    def on_frame(self, frame):  # an av.VideoFrame, in streamlit-webrtc's thread
        arrived = time.monotonic()
        image = frame.to_image()
        latest = self.latest
        if latest is None or arrived - latest.frame_time >= MIN_INTERVAL_S:
            latest = self.classify(image.copy(), arrived)
        return self.labelled(frame, image, latest)

    def labelled(self, frame, image: Image.Image, result: LiveResult):
        """The frame with the latest prediction written on it: the video shows the answer at once."""
        import av

        best = int(result.probabilities.argmax())
        text = "none of these?" if result.unsure else f"{self.classes[best]} {100 * result.probabilities[best]:.0f}%"
        draw = ImageDraw.Draw(image)
        draw.rectangle((0, 0, image.width, 28), fill=(0, 0, 0))
        draw.text((8, 6), text, fill=(255, 255, 255))
        out = av.VideoFrame.from_image(image)
        out.pts, out.time_base = frame.pts, frame.time_base
        return out

    def rate(self) -> tuple[float, float]:
        """(classifications per second, median milliseconds from a frame's arrival to its result), recent ones."""
        with self._lock:
            recent = list(self.done)
        if len(recent) < 2:
            return 0.0, 0.0
        span = recent[-1][1] - recent[0][1]
        per_second = (len(recent) - 1) / span if span > 0 else 0.0
        return per_second, 1000 * float(np.median([done - arrived for arrived, done in recent]))


def live_classifier(
    learner: MAML, params: Params, classes: list[str], support_x: torch.Tensor, support_y: torch.Tensor,
    threshold: float | None, drawings: bool,
) -> LiveClassifier:  # fmt: skip
    with torch.no_grad(), compute_slot():
        support = learner.backbone.features(params, support_x.to(learner.backbone.device)).cpu()
    return LiveClassifier(learner, params, classes, support, support_y.cpu(), threshold, drawings)


@dataclass
class BurstRecorder:
    """Frames recorded from the camera at `rate` a second, up to `limit`, while recording is on (the Build page's
    burst capture: hold an object up, turn it, and a class fills)."""

    rate: float = 5.0
    limit: int = 30
    drawings: bool = False  # the character model: each frame binarised and framed like a drawing
    frames: list = field(default_factory=list)
    recording: bool = False
    _last: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, rate: float, limit: int, drawings: bool) -> None:
        with self._lock:
            self.rate, self.limit, self.drawings = rate, limit, drawings
            self.frames, self.recording, self._last = [], True, 0.0

    def stop(self) -> None:
        self.recording = False

    def take(self) -> list[Image.Image]:
        """The frames recorded since the last take, once recording has stopped (else none yet)."""
        with self._lock:
            if self.recording:
                return []
            frames, self.frames = self.frames, []
        return frames

    def on_frame(self, frame):  # an av.VideoFrame, in streamlit-webrtc's thread
        now = time.monotonic()
        if self.recording and now - self._last >= 1 / self.rate:
            image = frame.to_image()
            image.thumbnail((FRAME_SIDE, FRAME_SIDE))
            with self._lock:
                if self.recording:
                    self._last = now
                    self.frames.append(as_drawing(image) if self.drawings else image)
                    self.recording = len(self.frames) < self.limit
        return frame
