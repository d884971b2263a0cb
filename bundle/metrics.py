"""Landmark metrics: radial error in mm, MRE with SD, success detection rates (SDR), per landmark and per image.

Definitions follow the ISBI 2015 challenge (Wang et al. 2016): the radial error of a landmark is the Euclidean
distance in mm between prediction and ground truth; MRE is its mean over all images and landmarks, SD its standard
deviation, and SDR@t the percentage of radial errors at most ``t`` mm.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from monai.metrics import CumulativeIterationMetric
from monai.utils import str2bool

from .analysis import has_analysis_landmarks, measurement_agreement
from .io import atomic_write_csv, atomic_write_text

__all__ = [
    "radial_errors_mm",
    "summarize_errors",
    "fit_uncertainty_calibration",
    "LandmarkRadialErrorMetric",
    "LandmarkEvaluationSaver",
    "SDR_THRESHOLDS_MM",
    "read_prediction_errors",
    "read_prediction_positions",
    "prediction_table",
    "calibration_from_evaluations",
    "check_calibration",
    "mean_and_se",
]

SDR_THRESHOLDS_MM = (2.0, 2.5, 3.0, 4.0)
logger = logging.getLogger(__name__)


def radial_errors_mm(pred_mm: torch.Tensor, true_mm: torch.Tensor) -> torch.Tensor:
    """Radial errors.

    Args:
        pred_mm: ``(..., N, 2)`` predicted landmarks in mm.
        true_mm: ``(..., N, 2)`` ground truth in mm, same frame.

    Returns:
        ``(..., N)`` Euclidean distances in mm.
    """
    if pred_mm.shape != true_mm.shape or pred_mm.shape[-1] != 2:
        raise ValueError(f"pred and truth should have the same (..., N, 2) shape, got {tuple(pred_mm.shape)} and {tuple(true_mm.shape)}.")
    return torch.linalg.vector_norm(pred_mm.float() - true_mm.float(), dim=-1)


def summarize_errors(
    errors_mm: torch.Tensor, names: Sequence[str] | None = None, thresholds_mm: Sequence[float] = SDR_THRESHOLDS_MM
) -> dict:
    """Summary of a ``(num_images, N)`` radial-error table in mm.

    Returns:
        ``{"n_images", "n_landmarks", "mre_mm", "sd_mm", "sdr": {"2.0": %, ...}, "per_landmark": [{"index", "name",
        "mre_mm", "sd_mm", "sdr": {...}}, ...]}``. SD uses the population formula (``unbiased=False``) like the
        challenge's evaluation code.
    """
    e = errors_mm.detach().double().cpu()
    if e.ndim != 2 or e.numel() == 0:
        raise ValueError(f"errors should be a non-empty (num_images, N) table, got shape {tuple(e.shape)}.")

    def stats(x: torch.Tensor) -> dict:
        return {
            "mre_mm": round(float(x.mean()), 4),
            "sd_mm": round(float(x.std(unbiased=False)), 4),
            "sdr": {f"{t:g}": round(100.0 * float((x <= t).double().mean()), 2) for t in thresholds_mm},
        }

    out = {"n_images": int(e.shape[0]), "n_landmarks": int(e.shape[1]), **stats(e.flatten())}
    out["per_landmark"] = [
        {"index": i + 1, "name": names[i] if names and i < len(names) else f"L{i + 1}", **stats(e[:, i])}
        for i in range(e.shape[1])
    ]
    return out


class LandmarkRadialErrorMetric(CumulativeIterationMetric):
    """MONAI metric over batches of predicted and true landmarks in mm.

    ``y_pred`` and ``y`` are ``(B, N, 2)`` (or lists of ``(N, 2)``) in mm. The buffer holds the ``(B, N)`` radial
    errors; :meth:`aggregate` returns the MRE (``kind="mre"``) or the SDR in % at ``threshold_mm`` (``kind="sdr"``).
    Wrapped in MONAI's ``IgniteMetricHandler`` with ``save_details=True`` the per-image errors reach
    ``engine.state.metric_details``.
    """

    def __init__(self, kind: str = "mre", threshold_mm: float = 2.0):
        super().__init__()
        if kind not in ("mre", "sdr"):
            raise ValueError(f"kind should be 'mre' or 'sdr', got {kind!r}.")
        self.kind, self.threshold_mm = kind, threshold_mm

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("ground truth landmarks are required.")
        return radial_errors_mm(torch.as_tensor(y_pred), torch.as_tensor(y))

    def aggregate(self) -> torch.Tensor:
        errors = self.get_buffer()
        if not isinstance(errors, torch.Tensor) or errors.numel() == 0:
            raise ValueError("no landmark errors were accumulated.")
        if self.kind == "mre":
            return errors.float().mean()
        return 100.0 * (errors <= self.threshold_mm).float().mean()


class LandmarkEvaluationSaver:
    """Ignite handler: collects each evaluated image's predictions and radial errors and, when the run completes,
    writes ``metrics.json`` (:func:`summarize_errors`), ``per_image_errors.csv`` (one row per image: the radial
    error of every landmark and their mean, in mm) and ``predictions.csv`` (predicted and true landmarks, original
    pixels, x/y order, with the radial error, the heatmap spread where there is one and the image's pixel spacing
    ``spacing_x_mm`` / ``spacing_y_mm``, so that the positions convert to mm without the images), with the 19 ISBI
    landmarks ``measurements.json`` (how well the cephalometric analysis of the predictions agrees with the ground
    truth's: :func:`bundle.analysis.measurement_agreement`), and with ``pictures`` two kinds of picture to look at: ``errors_by_landmark.png`` (per
    landmark MRE, SD and SDR@2mm) and ``worst_cases/RANK_IMAGE.png``, the ``worst_cases`` images with the largest
    mean error drawn with their predictions (red crosses, numbered), the ground truth (green circles) and the
    error of each landmark (yellow lines). Files are written to a temporary name first and renamed, so none is
    ever half-written.

    Args:
        output_dir: folder for the files.
        names: landmark names for the per-landmark table.
        pictures: write the pictures.
        worst_cases: how many of the worst images to draw.
    """

    def __init__(self, output_dir: str, names: Sequence[str] | None = None, pictures: bool | str = False, worst_cases: int = 5):
        self.output_dir = Path(output_dir)
        self.names = list(names) if names else None
        self.pictures = str2bool(str(pictures), raise_exc=False)  # the command line may give the string 'false'
        self.worst_cases = max(0, int(worst_cases))
        self._paths: list[str] = []
        self._rows: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._spreads: list[torch.Tensor] = []
        self.summary: dict | None = None

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._write)

    def _reset(self, engine) -> None:
        self._rows.clear()
        self._spreads.clear()
        self._paths.clear()

    def _collect(self, engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batches = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        for out, batch in zip(outputs, batches):
            if "true_mm" not in out:
                continue
            self._rows.append((str(batch.get("image_name", out.get("image_name", "?"))), out["pred_mm"], out["true_mm"],
                               torch.as_tensor(batch["spacing"])))
            self._paths.append(str(batch.get("image_path", "")))
            if "spread_mm" in out:
                self._spreads.append(torch.as_tensor(out["spread_mm"]).float().cpu())

    def _write(self, engine) -> None:
        if not self._rows:
            return
        errors = torch.stack([radial_errors_mm(p, t) for _, p, t, _ in self._rows])
        self.summary = summarize_errors(errors, self.names)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.output_dir / "metrics.json", json.dumps(self.summary, indent=2))
        n = errors.shape[1]
        header = ["image", *[f"L{i + 1}_mm" for i in range(n)], "mean_mm"]
        lines = [header] + [
            [name, *[f"{float(v):.4f}" for v in err], f"{float(err.mean()):.4f}"] for (name, *_), err in zip(self._rows, errors)
        ]
        atomic_write_csv(self.output_dir / "per_image_errors.csv", lines)
        spreads = self._spreads if len(self._spreads) == len(self._rows) else [None] * len(self._rows)
        pred_rows = [["image", "landmark", "name", "x_pred", "y_pred", "x_true", "y_true", "error_mm", "spread_mm",
                      "spacing_x_mm", "spacing_y_mm"]]
        for (name, p, t, sp), err, spread in zip(self._rows, errors, spreads):
            sp_yx = torch.as_tensor(sp).float().cpu().reshape(-1).expand(2)  # (y, x) mm; one number: both
            for i in range(n):
                pp, tt = p[i] / sp, t[i] / sp
                pred_rows.append([name, i + 1, self.names[i] if self.names else f"L{i + 1}", f"{float(pp[1]):.2f}",
                                  f"{float(pp[0]):.2f}", f"{float(tt[1]):.2f}", f"{float(tt[0]):.2f}",
                                  f"{float(err[i]):.4f}", "" if spread is None else f"{float(spread[i]):.4f}",
                                  f"{float(sp_yx[1]):.6g}", f"{float(sp_yx[0]):.6g}"])
        atomic_write_csv(self.output_dir / "predictions.csv", pred_rows)
        if len(self._spreads) == len(self._rows):
            cal = fit_uncertainty_calibration(torch.stack(self._spreads), errors)
            atomic_write_text(self.output_dir / "calibration.json", json.dumps(cal, indent=2))
        if self.names and has_analysis_landmarks(self.names):
            pred = torch.stack([torch.as_tensor(p).float().cpu() for _, p, _, _ in self._rows]).flip(-1).numpy()
            true = torch.stack([torch.as_tensor(t).float().cpu() for _, _, t, _ in self._rows]).flip(-1).numpy()
            agreement = measurement_agreement(pred, true)
            atomic_write_text(self.output_dir / "measurements.json", json.dumps(agreement, indent=2))
            engine.logger.info("cephalometric analysis: the measurements' types agree with the ground truth's in %.1f%% "
                               "(mean of the eight; %s)", agreement["mean_type_agreement_pct"],
                               ", ".join(f"{k} {v['type_agreement_pct']:.0f}%" for k, v in agreement["measurements"].items()))
        if self.pictures:
            self._draw(errors)
        s = self.summary
        engine.logger.info(
            "landmarks: %d images, MRE %.3f ± %.3f mm, SDR %s -> %s",
            s["n_images"], s["mre_mm"], s["sd_mm"], ", ".join(f"{k} mm {v:.1f}%" for k, v in s["sdr"].items()), self.output_dir,
        )

    def _draw(self, errors: torch.Tensor) -> None:
        """``errors_by_landmark.png`` and the worst images (a picture that cannot be made is logged, not fatal)."""
        from .io import read_image
        from .outputs import landmark_error_chart, overlay_picture, save_picture

        save_picture(landmark_error_chart(self.summary), self.output_dir / "errors_by_landmark.png")
        folder = self.output_dir / "worst_cases"
        if folder.is_dir():
            for old in folder.glob("*.png"):  # an earlier evaluation's pictures
                old.unlink()
        if not self.worst_cases:
            return
        folder.mkdir(exist_ok=True)
        means = errors.mean(1)
        for rank, i in enumerate(torch.argsort(means, descending=True)[: self.worst_cases].tolist(), start=1):
            name, pred, true, spacing = self._rows[i]
            try:
                image, _ = read_image(self._paths[i])
            except Exception as e:  # noqa: BLE001 - a missing picture must not lose the metrics
                logger.warning(f"no worst-case picture of {name}: {e}")
                continue
            sp = spacing.float().cpu()
            worst = int(torch.argmax(errors[i]))
            label = self.names[worst] if self.names else f"L{worst + 1}"
            caption = (f"{name}: MRE {float(means[i]):.2f} mm; worst {worst + 1} {label} {float(errors[i, worst]):.1f} mm",
                       "red +: prediction (numbered), green o: ground truth, yellow: the error")
            pic = overlay_picture(image, (pred.float().cpu() / sp).flip(-1).numpy(),
                                  truth_xy=(true.float().cpu() / sp).flip(-1).numpy(), caption=caption)
            save_picture(pic, folder / f"{rank:02d}_{Path(name).stem}.png")


def fit_uncertainty_calibration(spread_mm: torch.Tensor, errors_mm: torch.Tensor) -> dict:
    """Fit ``error = a * spread + b_l`` by least squares: one slope ``a`` shared by all landmarks and one intercept
    ``b_l`` per landmark (landmarks differ in how hard they are: Sella is found far more surely than Porion), so
    that the heatmap spread becomes an expected radial error in mm (``uncertainty_calibration: [a, [b_1, ...]]``
    in inference.yaml).

    Args:
        spread_mm: ``(num_images, N)`` heatmap spreads in mm.
        errors_mm: ``(num_images, N)`` radial errors in mm.

    Returns:
        ``{"uncertainty_calibration": [a, [b_l]], "pearson_r": r, "pearson_r_spread_only": r0,
        "mean_abs_deviation_mm": ..., "n": ...}``: ``r`` correlates the calibrated uncertainty with the error,
        ``r0`` the raw spread with the error; ``a`` is kept non-negative.
    """
    x, y = spread_mm.double(), errors_mm.double()
    if x.shape != y.shape or x.ndim != 2 or x.shape[0] < 2:
        raise ValueError("spread and errors should be (num_images, N) tables of the same shape, with 2 images or more.")
    xc, yc = x - x.mean(0), y - y.mean(0)  # within-landmark deviations give the shared slope
    var = (xc**2).sum()
    a = max(float((xc * yc).sum() / var), 0.0) if var > 0 else 0.0
    b = y.mean(0) - a * x.mean(0)
    pred = a * x + b

    def corr(u: torch.Tensor, v: torch.Tensor) -> float:
        u, v = u.flatten(), v.flatten()
        return float(torch.corrcoef(torch.stack([u, v]))[0, 1]) if u.std() > 0 and v.std() > 0 else 0.0

    return {
        "uncertainty_calibration": [round(a, 5), [round(float(v), 4) for v in b]],
        "pearson_r": round(corr(pred, y), 4),
        "pearson_r_spread_only": round(corr(x, y), 4),
        "mean_abs_deviation_mm": round(float((pred - y).abs().mean()), 4),
        "n": int(x.numel()),
    }


def _read_predictions(eval_dir: str | Path, columns: Sequence[str]) -> list[dict]:
    """The rows of the ``predictions.csv`` that :class:`LandmarkEvaluationSaver` wrote in ``eval_dir``, checked to hold
    ``image``, ``landmark`` and ``columns``; a missing file or column raises ``FileNotFoundError`` / ``ValueError``."""
    path = Path(eval_dir) / "predictions.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (an evaluation directory written by configs/evaluate.yaml?)")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"image", "landmark", *columns} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: no column(s) {sorted(missing)}")
        return list(reader)


def read_prediction_errors(eval_dir: str | Path, columns: str | Sequence[str] = "error_mm") -> dict:
    """``{(image, landmark): error_mm}`` from the ``predictions.csv`` that :class:`LandmarkEvaluationSaver` wrote in
    ``eval_dir``; with several ``columns`` (e.g. ``("error_mm", "spread_mm")``) the values are tuples in that order.
    A missing file or column raises ``FileNotFoundError`` / ``ValueError`` naming it."""
    names = [columns] if isinstance(columns, str) else list(columns)
    rows = {(r["image"], int(r["landmark"])): tuple(float(r[c]) for c in names) for r in _read_predictions(eval_dir, names)}
    return {k: v[0] for k, v in rows.items()} if isinstance(columns, str) else rows


def _table(rows: list[dict], columns: Sequence[str], source) -> tuple[list[str], list[str], np.ndarray]:
    images = sorted({r["image"] for r in rows})
    landmarks = sorted({int(r["landmark"]) for r in rows})
    if len(rows) != len(images) * len(landmarks):
        raise ValueError(f"{source}: predictions.csv does not hold every landmark of every image")
    index = {name: i for i, name in enumerate(images)}
    values = np.zeros((len(images), len(landmarks), len(columns)))
    names = [f"L{k}" for k in landmarks]
    for r in rows:
        k = landmarks.index(int(r["landmark"]))
        values[index[r["image"]], k] = [float(r[c]) for c in columns]
        names[k] = r.get("name") or names[k]
    return images, names, values


def prediction_table(eval_dir: str | Path, columns: Sequence[str]) -> tuple[list[str], list[str], np.ndarray]:
    """An evaluation's ``predictions.csv`` as ``(images, landmark names, values)``, ``values`` ``(images, N,
    len(columns))`` in image and landmark order; every image must have every landmark."""
    return _table(_read_predictions(eval_dir, columns), columns, eval_dir)


def read_prediction_positions(eval_dir: str | Path) -> dict:
    """The positions in an evaluation's ``predictions.csv`` as arrays: ``{"images": [...], "names": [...],
    "pred_xy": (images, N, 2), "true_xy": (images, N, 2)`` (original pixels, x / y), ``"spacing_mm"``, and the same
    positions in mm, ``"pred_xy_mm"``, ``"true_xy_mm"}``. The spacing is ``(images, N, 2)`` (x / y mm) from the
    file's ``spacing_x_mm`` / ``spacing_y_mm`` columns; files written before those columns (0.5.1 and earlier) get
    one spacing for the whole file instead, inferred as the median of ``error_mm`` over the pixel distance, taken
    over the errors of more than 5 pixels."""
    columns = ("x_pred", "y_pred", "x_true", "y_true", "error_mm")
    rows = _read_predictions(eval_dir, columns)
    has_spacing = bool(rows) and {"spacing_x_mm", "spacing_y_mm"} <= set(rows[0])
    images, names, table = _table(rows, columns + (("spacing_x_mm", "spacing_y_mm") if has_spacing else ()), eval_dir)
    if has_spacing:
        spacing = table[..., 5:7]
    else:
        px = np.hypot(table[..., 0] - table[..., 2], table[..., 1] - table[..., 3])
        big = px > 5
        spacing = float(np.median(table[..., 4][big] / px[big])) if big.any() else 0.1
    pred, true = table[..., :2], table[..., 2:4]
    return {"images": images, "names": names, "pred_xy": pred, "true_xy": true, "spacing_mm": spacing,
            "pred_xy_mm": pred * spacing, "true_xy_mm": true * spacing}


def calibration_from_evaluations(eval_dirs: Sequence[str | Path]) -> dict:
    """:func:`fit_uncertainty_calibration` over the images of several evaluation directories pooled (e.g. the
    validation folds of a cross-validation, each evaluated by the models that never trained on it), so a model
    refitted on every training image can still be given a calibration fitted on held-out errors."""
    tables = [torch.as_tensor(prediction_table(d, ("error_mm", "spread_mm"))[2], dtype=torch.float32) for d in eval_dirs]
    if len({t.shape[1] for t in tables}) != 1:
        raise ValueError(f"the evaluations have different numbers of landmarks: {[t.shape[1] for t in tables]}")
    table = torch.cat(tables)
    return fit_uncertainty_calibration(table[..., 1], table[..., 0])


def check_calibration(calibration, eval_dirs: Sequence[str | Path], floor_mm: float = 0.0, groups: int = 4) -> dict:
    """How well a calibration (``[a, b]`` or a ``calibration.json``) predicts the errors of evaluations it was not
    fitted on: the Pearson r of expected against actual error (and of the raw spread), and, with the landmarks
    grouped into ``groups`` equal parts by expected error, each group's mean expected and mean actual error. The
    expected error is floored at ``floor_mm``, as inference floors it at one pixel of the decoding grid."""
    from .transforms import parse_calibration

    tables = [prediction_table(d, ("error_mm", "spread_mm"))[2] for d in eval_dirs]
    table = np.concatenate(tables)
    a, b = parse_calibration(calibration, table.shape[1])
    errors, spread = table[..., 0].ravel(), table[..., 1]
    expected = np.maximum(a * spread + np.broadcast_to(b.numpy(), spread.shape[1:]), floor_mm).ravel()
    group = np.digitize(expected, np.quantile(expected, np.arange(1, groups) / groups))
    return {
        "n": int(errors.size),
        "pearson_r": round(float(np.corrcoef(expected, errors)[0, 1]), 3),
        "pearson_r_spread_only": round(float(np.corrcoef(spread.ravel(), errors)[0, 1]), 3),
        "at_floor": int((expected <= floor_mm).sum()),
        "groups_expected_mm": [round(float(expected[group == g].mean()), 2) for g in range(groups)],
        "groups_actual_mm": [round(float(errors[group == g].mean()), 2) for g in range(groups)],
    }


def mean_and_se(values: Sequence[float]) -> dict:
    """``{"n", "mean", "sd", "se"}`` of ``values`` (sample SD, SE = SD / sqrt(n); NaN where n is too small), rounded
    to 4 decimals: the summary of paired differences and of cross-validation folds."""
    n = len(values)
    mean = sum(values) / n if n else math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else math.nan
    return {"n": n, "mean": round(mean, 4), "sd": round(sd, 4), "se": round(sd / math.sqrt(n), 4) if n > 1 else math.nan}
