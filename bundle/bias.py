"""Per-landmark bias correction.

Where the annotation to be matched (ISBI: the senior doctor's) places a landmark consistently to one side of where
the networks put it, the mean residual (prediction minus annotation, in mm, image axes) over held-out predictions
estimates that offset. ``models/bias_correction.json`` (``scripts/fit_bias_correction.py``) holds it for the 150 ISBI
Train images over the whole-pipeline cross-validation: ``global`` for the global pass alone (whose training target,
the mean of both doctors, sits off the senior's placement), ``refined`` for the final positions.

Two uses (:class:`CorrectBiasd`): the ``global`` offsets move each refinement crop's centre before the refinement
(``refine_centre_correction``, the default of ``inference.yaml``: the refinement, trained on the senior annotation,
still places the landmark), and either entry can be subtracted from the final positions (``bias_correction``, an
option only: on Test1 the ``refined`` offsets did not carry over, see docs/README.md).

The global pass's offset is mostly a property of the annotations, not of the network: it matches the mean offset of
its training target (ISBI: the mean of both doctors) from the ground truth (the senior doctor) over its training
images (:func:`annotation_bias`, ``fit_bias_correction.py --annotations``), which needs no cross-validation of the
model and so serves any model trained on that target (the CPU recipe's).
"""

from __future__ import annotations

import logging
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.transforms import Transform

from .io import annotated_positions_mm, check_model_landmarks, if_for_landmarks, landmark_datalist, read_model_json

__all__ = ["fit_bias", "annotation_bias", "load_bias_correction", "default_bias_correction", "CorrectBiasd"]

logger = logging.getLogger(__name__)

ENTRIES = ("refined", "global")


def fit_bias(pred_xy_mm: np.ndarray, true_xy_mm: np.ndarray) -> np.ndarray:
    """The mean residual ``(N, 2)`` (x, y mm) of ``(images, N, 2)`` predictions against their annotations."""
    pred, true = np.asarray(pred_xy_mm, float), np.asarray(true_xy_mm, float)
    if pred.shape != true.shape or pred.ndim != 3 or pred.shape[-1] != 2 or len(pred) < 1:
        raise ValueError(f"fit_bias needs two (images, N, 2) arrays of one shape, got {pred.shape} and {true.shape}.")
    return (pred - true).mean(0)


def annotation_bias(
    data_root: str | Path,
    train_ground_truth: str = "mean",
    ground_truth: str = "senior",
    split: str = "trainval",
    val_fraction: float = 0.2,
    seed: int = 0,
    fold: int | None = None,
    n_landmarks: int | None = 19,
) -> tuple[np.ndarray, int]:
    """The mean offset ``(N, 2)`` (x, y mm) of a training target from the ground truth over the training images, and
    how many images: where a network trained on ``train_ground_truth`` lands, on average, relative to
    ``ground_truth``. ``split`` / ``val_fraction`` / ``seed`` / ``fold`` select the images as the training config
    did (ISBI layout, :func:`bundle.io.landmark_datalist`): ``"trainval"`` for a model trained on all of Train,
    ``"train"`` (with ``fold``) for one that held out a validation part. Zero when the two are the same annotation."""
    target = landmark_datalist(data_root, split, train_ground_truth, val_fraction, seed, None, fold)
    truth = landmark_datalist(data_root, split, ground_truth, val_fraction, seed, None, fold)
    if not target:
        raise ValueError(f"{data_root}: no {split} images to fit an annotation offset on.")
    diffs = annotated_positions_mm(target, n_landmarks) - annotated_positions_mm(truth, n_landmarks)
    return diffs.mean(0), len(diffs)


def load_bias_correction(correction: str | Path | dict | None, landmark_names: Sequence[str] | None = None) -> dict | None:
    """A bias correction from a JSON file written by ``scripts/fit_bias_correction.py`` (or the dict); None: none.
    With ``landmark_names`` one made for other landmarks is refused (by count, and by name where it records them)."""
    correction, source = read_model_json(correction, "bias correction", "scripts/fit_bias_correction.py")
    if correction is None:
        return None
    entries = [e for e in ENTRIES if e in correction]
    if not entries:
        raise ValueError(f"{source}: a bias correction needs 'refined' and/or 'global', each N x 2 offsets in mm.")
    n = {len(correction[e]) for e in entries}
    if len(n) != 1 or any(np.asarray(correction[e], float).shape[-1:] != (2,) for e in entries):
        raise ValueError(f"{source}: its entries should each be N x 2 offsets (x, y mm) of the same N.")
    if landmark_names is not None:
        fix = ("fit one for these landmarks (scripts/fit_bias_correction.py) or switch it off "
               "(--refine_centre_correction null, --bias_correction null)")
        check_model_landmarks(source, "bias correction", n.pop(), correction.get("landmark_names"), landmark_names, fix)
    return correction


def default_bias_correction(path: str | Path, landmark_names: Sequence[str]) -> str | None:
    """``path`` when the correction there is for ``landmark_names``, else None with a warning: the default of
    ``refine_centre_correction`` in ``inference.yaml``, so that other landmark sets run without it instead of failing
    (a correction named explicitly is checked strictly by :func:`load_bias_correction`)."""
    return if_for_landmarks(load_bias_correction, path, landmark_names, "bias correction off", logger)


class CorrectBiasd(Transform):
    """Post-processing: subtract the per-landmark bias from ``pred_mm`` and ``pred_landmarks`` (original pixels);
    the uncorrected points go to ``uncorrected_landmarks``. Without a correction (``None``) it changes nothing.
    Placed between the global decoding and :class:`~bundle.refine.RefineLandmarksd` with ``entry="global"`` it moves
    the refinement's crop centres (``refine_centre_correction``); placed last, the final positions (``bias_correction``).

    Args:
        correction: a bias correction (:func:`load_bias_correction`; a JSON path or dict) or None.
        entry: ``"refined"`` (after the refinement pass) or ``"global"`` (the global pass alone).
        landmark_names: the run's landmarks: a correction for others is refused when the transform is built.
    """

    def __init__(self, correction=None, entry: str = "refined", landmark_names: Sequence[str] | None = None):
        self.correction = load_bias_correction(correction, landmark_names)
        if entry not in ENTRIES:
            raise ValueError(f"entry should be one of {ENTRIES}, got {entry!r}.")
        self.entry = entry
        self.bias_yx = None
        if self.correction is not None:
            if entry not in self.correction:
                raise ValueError(f"the bias correction has no {entry!r} entry (it has {[e for e in ENTRIES if e in self.correction]}).")
            self.bias_yx = torch.as_tensor(self.correction[entry], dtype=torch.float32).flip(-1)  # (x, y) -> (y, x)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.bias_yx is None or "pred_mm" not in d:
            return d
        spacing = torch.as_tensor(d["spacing"]).float().cpu()
        pred_mm = torch.as_tensor(d["pred_mm"]).float().cpu()
        if pred_mm.shape != self.bias_yx.shape:
            raise ValueError(f"the bias correction has {len(self.bias_yx)} landmarks, the prediction {len(pred_mm)}.")
        d["uncorrected_landmarks"] = torch.as_tensor(d["pred_landmarks"]).float().cpu()
        d["pred_mm"] = pred_mm - self.bias_yx
        d["pred_landmarks"] = d["pred_mm"] / spacing
        return d
