"""2-D views of feature vectors (t-SNE, PCA) and numbers that say how well classes separate."""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import silhouette_score

from metacore.errors import MetacoreError


def valid_perplexity(n_points: int, requested: float = 30.0) -> float:
    """t-SNE needs perplexity < n_points; small tasks get (n - 1) / 3, the usual rule of thumb."""
    if n_points < 3:
        raise MetacoreError(f"a 2-D map needs at least 3 images, got {n_points}")
    return float(max(1.0, min(requested, (n_points - 1) / 3)))


def project(features: np.ndarray, method: str = "tsne", perplexity: float = 30.0, seed: int = 0) -> np.ndarray:
    """(n, d) features -> (n, 2) coordinates."""
    features = np.asarray(features, dtype=np.float64)
    n = len(features)
    if method == "pca":
        if n < 2:
            raise MetacoreError("PCA needs at least 2 images")
        coords = PCA(n_components=min(2, n, features.shape[1]), random_state=seed).fit_transform(features)
        return np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    if method == "tsne":
        tsne = TSNE(
            n_components=2, perplexity=valid_perplexity(n, perplexity), init="pca", random_state=seed, max_iter=500
        )
        return tsne.fit_transform(features)
    raise MetacoreError(f"unknown projection '{method}' (choose: tsne, pca)")


def separation_scores(features: np.ndarray, labels: np.ndarray) -> dict[str, float | None]:
    """Silhouette score (in feature space) and nearest-class-mean accuracy (leave-one-out)."""
    features, labels = np.asarray(features, dtype=np.float64), np.asarray(labels)
    classes = np.unique(labels)
    silhouette = None
    if 2 <= len(classes) < len(labels):
        silhouette = float(silhouette_score(features, labels))
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
