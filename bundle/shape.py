"""A statistical shape check for the global pass: a landmark that the other landmarks place far from where the
network put it (a whole-structure confusion, e.g. Gonion decoded on the hyoid) is decoded again, from the same
heatmap, near where the shape puts it.

The shape model is the Procrustes mean of the training annotations (similarity-aligned, in mm) and, per landmark,
the RMS distance of the aligned annotations from the mean (``sd_mm``). At inference a similarity transform maps the
mean onto the decoded landmarks, fitted again without the landmarks it cannot explain (iteratively reweighted);
``z = distance / sd_mm`` of each landmark from its mapped mean position says how implausible it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .io import check_model_landmarks, if_for_landmarks, read_model_json

__all__ = ["similarity_transform", "fit_shape_model", "load_shape_model", "default_shape_model", "shape_z_scores"]

logger = logging.getLogger(__name__)


def similarity_transform(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` ``(N, 2)`` onto ``dst``;
    returns a function of ``(M, 2)`` points. ``weights`` ``(N,)`` weigh the points (zero: ignored)."""
    src, dst = np.asarray(src, float), np.asarray(dst, float)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, float)
    if w.sum() <= 0:
        raise ValueError("similarity_transform needs at least one point with a positive weight.")
    ms, md = (w[:, None] * src).sum(0) / w.sum(), (w[:, None] * dst).sum(0) / w.sum()
    a, b = src - ms, dst - md
    norm = (w * (a**2).sum(1)).sum()
    if norm <= 0:
        raise ValueError("similarity_transform needs two distinct points.")
    c = (w * (a[:, 0] * b[:, 0] + a[:, 1] * b[:, 1])).sum() / norm
    s = (w * (a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0])).sum() / norm
    rot = np.array([[c, -s], [s, c]])
    return lambda x: (np.asarray(x, float) - ms) @ rot.T + md


def fit_shape_model(shapes_mm: Sequence[np.ndarray], iterations: int = 10) -> dict:
    """Generalised Procrustes analysis of ``(M, N, 2)`` landmark sets in mm.

    Returns:
        ``{"mean": (N, 2) list, "sd_mm": (N,) list, "n_shapes": M}``; the mean has the shapes' average size (so
        ``sd_mm`` is in mm of an average head) and the first shape's position (only relative positions matter).
    """
    shapes = np.asarray(shapes_mm, float)
    if shapes.ndim != 3 or shapes.shape[-1] != 2 or len(shapes) < 2:
        raise ValueError(f"fit_shape_model needs (M >= 2, N, 2) landmark sets, got shape {shapes.shape}.")
    mean = shapes[0].copy()
    for _ in range(iterations):
        aligned = np.stack([similarity_transform(s, mean)(s) for s in shapes])
        new = aligned.mean(0)
        new = similarity_transform(new, shapes[0])(new)  # keep the reference frame fixed
        if np.abs(new - mean).max() < 1e-6:
            mean = new
            break
        mean = new
    def size(x):  # centroid size
        return float(np.sqrt(((x - x.mean(0)) ** 2).sum()))

    centre = mean.mean(0)
    mean = (mean - centre) * (np.mean([size(s) for s in shapes]) / size(mean)) + centre
    aligned = np.stack([similarity_transform(s, mean)(s) for s in shapes])
    sd = np.sqrt(((aligned - mean) ** 2).sum(-1).mean(0))
    return {"mean": np.round(mean, 4).tolist(), "sd_mm": np.round(sd, 4).tolist(), "n_shapes": int(len(shapes))}


def load_shape_model(model: str | Path | dict | None, landmark_names: Sequence[str] | None = None) -> dict | None:
    """A shape model from a JSON file written by ``scripts/fit_shape_model.py`` (or the dict itself); None: none.

    With ``landmark_names`` (the run's landmarks, in order) a model for other landmarks is refused here, before any
    image is read: by count, and by name where the model records its ``landmark_names``."""
    model, source = read_model_json(model, "shape model", "scripts/fit_shape_model.py")
    if model is None:
        return None
    if "mean" not in model or "sd_mm" not in model or len(model["mean"]) != len(model["sd_mm"]):
        raise ValueError(f"{source}: a shape model needs 'mean' (N x 2) and 'sd_mm' (N) of the same N.")
    if landmark_names is not None:
        fix = "fit one for these landmarks (scripts/fit_shape_model.py) or switch the shape check off (--shape_model null)"
        check_model_landmarks(source, "shape model", len(model["mean"]), model.get("landmark_names"), landmark_names, fix)
    return model


def default_shape_model(path: str | Path, landmark_names: Sequence[str]) -> str | None:
    """``path`` (the bundled shape model) when it is for ``landmark_names``, else None with a warning: the default
    of ``shape_model`` in the configs, so that other landmark sets run with the shape check off instead of failing
    (a shape model named explicitly is checked strictly by :func:`load_shape_model`)."""
    return if_for_landmarks(load_shape_model, path, landmark_names, "shape check off", logger)


def shape_z_scores(points_mm: np.ndarray, model: dict, z_inlier: float = 3.0, iterations: int = 3):
    """How far each landmark is from where the others place it.

    Returns:
        ``(expected_mm, z)``: ``(N, 2)`` the mean shape mapped onto ``points_mm`` by a similarity fitted to the
        landmarks with ``z < z_inlier`` (refitted ``iterations`` times), and ``(N,)`` the distances from it in
        units of each landmark's ``sd_mm``.
    """
    points = np.asarray(points_mm, float)
    mean, sd = np.asarray(model["mean"], float), np.maximum(np.asarray(model["sd_mm"], float), 1e-3)
    if points.shape != mean.shape:
        raise ValueError(
            f"the shape model has {len(mean)} landmarks, the prediction {len(points)}: fit one for these landmarks "
            "(scripts/fit_shape_model.py) or switch the shape check off (--shape_model null)."
        )
    weights = np.ones(len(points))
    for _ in range(max(1, iterations)):
        expected = similarity_transform(mean, points, weights)(mean)
        z = np.linalg.norm(points - expected, axis=1) / sd
        inliers = z < z_inlier
        if inliers.sum() < 3:  # too few to trust a refit: keep the fit to all
            break
        weights = inliers.astype(float)
    return expected, z
