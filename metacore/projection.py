"""2-D views of feature vectors (t-SNE, PCA) and numbers that say how well classes separate.

Degenerate inputs are handled here, before they reach native code: scikit-learn's t-SNE
segfaults (it takes the whole process down) when all points coincide, so identical points
are mapped once and drawn on top of each other, and non-finite features are refused.
Callers that serve many users run `project` through `metacore.isolation` as well.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from metacore.errors import MetacoreError

MAX_TSNE_POINTS = 3000  # t-SNE of more takes minutes on 2 cores; PCA has no such limit
SAME_POINT = 1e-6  # points closer than this (relative to the features' magnitude) are one point on the map


def valid_perplexity(n_points: int, requested: float = 30.0) -> float:
    """t-SNE needs perplexity < n_points; small tasks get (n - 1) / 3, the usual rule of thumb."""
    if n_points < 3:
        raise MetacoreError(f"a 2-D map needs at least 3 images, got {n_points}")
    return float(max(1.0, min(requested, (n_points - 1) / 3)))


def checked_features(features: np.ndarray) -> np.ndarray:
    """(n, d) finite float64 features, or a MetacoreError that says what is wrong."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] == 0:
        raise MetacoreError(f"features must be a non-empty (images, dimensions) array, got shape {features.shape}")
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        raise MetacoreError(
            f"{int(bad.sum())} of {len(features)} feature vectors hold NaN or infinite values "
            "(the model's weights diverged), so they cannot be mapped"
        )
    return features


def distinct_points(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct rows, centred and scaled to a largest magnitude of 1; for each input row the index
    of its distinct row). Rows closer than SAME_POINT of the features' magnitude count as one.

    Both maps ignore scale, but scikit-learn's t-SNE crashes on features around 1e150 or 1e-300.
    """
    features = checked_features(features)
    magnitude = float(np.abs(features).max())
    scaled = features / magnitude if magnitude > 0.0 else features
    _, first, inverse = np.unique(np.round(scaled / SAME_POINT), axis=0, return_index=True, return_inverse=True)
    distinct = scaled[first] - scaled[first].mean(0)
    spread = float(np.abs(distinct).max())
    return (distinct / spread if spread > 0.0 else distinct), inverse.reshape(-1)


def project(features: np.ndarray, method: str = "tsne", perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """(n, d) features -> (n, 2) coordinates. Identical feature vectors get identical coordinates."""
    if method not in ("tsne", "pca"):
        raise MetacoreError(f"unknown projection '{method}' (choose: tsne, pca)")
    n = len(features)
    if n < 2:
        raise MetacoreError(f"a 2-D map needs at least 2 images, got {n}")
    if method == "tsne" and n > MAX_TSNE_POINTS:
        raise MetacoreError(f"t-SNE of {n} images would take minutes; pick PCA or at most {MAX_TSNE_POINTS} images")
    distinct, inverse = distinct_points(features)  # checks the features too
    if len(distinct) <= 2 or distinct.shape[1] == 1:  # nothing to fit: one point, two, or a line
        line = distinct[:, 0] if distinct.shape[1] == 1 else np.array([-1.0, 1.0])[: len(distinct)]
        return np.stack([line, np.zeros_like(line)], 1)[inverse]
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(distinct)[inverse]
    tsne = TSNE(
        n_components=2,
        perplexity=valid_perplexity(len(distinct), perplexity),
        init="pca",
        random_state=seed,
        max_iter=500,
    )
    return tsne.fit_transform(distinct)[inverse]


def separation_scores(features: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Silhouette score (in feature space) and nearest-class-mean accuracy (leave-one-out).

    None where a score is undefined (one class, one image per class, non-finite features).
    """
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    if not np.isfinite(features).all():
        return {"silhouette": None, "nearest_mean_accuracy": None}
    if len(labels) < 2:
        return {"silhouette": None, "nearest_mean_accuracy": None}
    classes = np.unique(labels)
    silhouette = None
    if 2 <= len(classes) < len(labels):
        silhouette = float(silhouette_score(features, labels))
        silhouette = silhouette if np.isfinite(silhouette) else None
    correct = 0
    for i in range(len(labels)):
        keep = np.arange(len(labels)) != i
        means, names = [], []
        for c in classes:
            members = features[keep & (labels == c)]
            if len(members):
                means.append(members.mean(0))
                names.append(c)
        distances = ((np.stack(means) - features[i]) ** 2).sum(1)
        correct += names[int(distances.argmin())] == labels[i]
    return {"silhouette": silhouette, "nearest_mean_accuracy": correct / len(labels)}
