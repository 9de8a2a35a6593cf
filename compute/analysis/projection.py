"""2-D projection of the embeddings (train + val) for the dashboard's embedding map.

Methods:

* ``umap`` (McInnes et al. 2018, umap-learn), cosine metric — the default when umap-learn is
  installed: it keeps local neighbourhoods, which is what a reviewer looks for (clusters of
  errors, mislabeled islands).
* ``pca`` — the fallback without umap-learn: exact, linear, fast, deterministic.
* ``tsne`` (scikit-learn) — selectable; it has no ``transform``, see below.

Embeddings are L2-normalized first, so every method sees the same geometry as the cosine
twins.

Scale: all three are deterministic for a given ``seed``. For ``N > fit_sample`` rows the
projection is *fitted on a deterministic random sample* of ``fit_sample`` rows and the rest is
*transformed* in chunks: UMAP and PCA have a native ``transform``; t-SNE does not, so the
remaining rows are placed at the similarity-weighted mean position of their 5 nearest sampled
rows (cosine). Memory is then O(fit_sample) for the fit plus O(chunk) per transform step,
and the fit time does not grow with N. UMAP with a fixed ``random_state`` runs single-threaded
(that is how umap-learn guarantees reproducibility) — the price of determinism.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable

import numpy as np

from xaidash.constants import PROJECTIONS
from xaidash.errors import choices_error

log = logging.getLogger(__name__)

# below this many rows UMAP's spectral init / kNN graph is degenerate: use PCA instead
_MIN_ROWS_NONLINEAR = 16


def umap_available() -> bool:
    """True when umap-learn is importable (checked without importing it: numba is slow)."""
    return importlib.util.find_spec("umap") is not None


def default_projection() -> str:
    """``umap`` when installed, else ``pca``."""
    return "umap" if umap_available() else "pca"


def _normalize(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    out: np.ndarray = x / np.maximum(n, 1e-12)
    return out


def _pca_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the top-2 principal axes ``[2, K]`` with a deterministic sign."""
    mean = x.mean(axis=0, dtype=np.float64)
    xc = (x - mean).astype(np.float64)
    # economy SVD of the (sample) matrix; axes are rows of vt
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    axes = vt[:2]
    if axes.shape[0] < 2:  # K == 1: pad with a zero axis
        axes = np.vstack([axes, np.zeros((2 - axes.shape[0], x.shape[1]))])
    # SVD signs are arbitrary (LAPACK-dependent): make the largest-|.| loading positive
    for i in range(axes.shape[0]):
        j = int(np.argmax(np.abs(axes[i])))
        if axes[i, j] < 0:
            axes[i] = -axes[i]
    return mean, axes


def _in_chunks(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray, chunk: int) -> np.ndarray:
    """Apply ``fn`` to row chunks of ``x`` so a transform never holds all rows at once."""
    return np.concatenate([fn(x[s : s + chunk]) for s in range(0, x.shape[0], chunk)], axis=0)


def project_2d(
    vectors: np.ndarray,
    method: str | None = None,
    seed: int = 0,
    fit_sample: int = 50_000,
    chunk: int = 65_536,
) -> tuple[np.ndarray, str]:
    """Project ``[N, K]`` embeddings to ``[N, 2]`` float32.

    Returns ``(xy, method_used)``: ``method_used`` differs from ``method`` when the data is too
    small for a non-linear method (fewer than 16 rows: PCA) or ``method`` is None (default).
    Raises UserError for an unknown method and when ``umap`` is asked for but not installed.
    """
    if method is None and not umap_available():
        # the default map is UMAP: a silent PCA would pass for it (the demo once did)
        log.warning("projection: umap-learn is not installed, so the map is a PCA projection "
                    "(pip install 'xaidash[umap]' for the UMAP map, or pass --projection pca)")
    method = method or default_projection()
    if method not in PROJECTIONS:
        raise choices_error("projection", method, PROJECTIONS)
    if method == "umap" and not umap_available():
        from xaidash.errors import UserError

        raise UserError("--projection umap needs umap-learn: pip install umap-learn (or use pca)")
    x = _normalize(vectors)
    n = x.shape[0]
    if n == 0:
        return np.zeros((0, 2), np.float32), method
    if n == 1:
        return np.zeros((1, 2), np.float32), method
    if method != "pca" and n < _MIN_ROWS_NONLINEAR:
        log.info("projection: %d rows are too few for %s, using pca", n, method)
        method = "pca"

    rng = np.random.default_rng(seed)
    sample_idx = np.sort(rng.choice(n, size=fit_sample, replace=False)) if n > fit_sample else np.arange(n)
    xs = x[sample_idx]

    if method == "pca":
        mean, axes = _pca_fit(xs)
        out = _in_chunks(lambda c: ((c - mean) @ axes.T), x, chunk)
        return out.astype(np.float32), method

    if method == "umap":
        import umap  # heavy (numba): import only when used

        reducer = umap.UMAP(
            n_components=2,
            n_neighbors=min(15, xs.shape[0] - 1),
            metric="cosine",
            random_state=seed,
            # a fixed random_state already forces single-threaded; say so to silence the warning
            n_jobs=1,
        )
        fitted = reducer.fit_transform(xs)
        out = np.empty((n, 2), np.float32)
        out[sample_idx] = fitted
        if n > xs.shape[0]:
            rest = np.setdiff1d(np.arange(n), sample_idx)
            out[rest] = _in_chunks(reducer.transform, x[rest], chunk)
        return out, method

    # t-SNE: fit on the sample, interpolate the rest from the nearest sampled rows
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(2.0, (xs.shape[0] - 1) / 3.0)))
    fitted = TSNE(
        n_components=2, perplexity=perplexity, metric="cosine", init="pca", random_state=seed
    ).fit_transform(xs)
    out = np.empty((n, 2), np.float32)
    out[sample_idx] = fitted
    if n > xs.shape[0]:
        from xaidash.compute.analysis.neighbors import class_restricted_topk

        rest = np.setdiff1d(np.arange(n), sample_idx)
        sims, idx = class_restricted_topk(
            x[rest], np.zeros(rest.size, np.int64), xs, np.zeros(xs.shape[0], np.int64), k=5
        )
        w = np.clip(sims, 1e-6, None)
        w = w / w.sum(axis=1, keepdims=True)
        out[rest] = np.einsum("rk,rkd->rd", w, fitted[idx]).astype(np.float32)
    return out, method
