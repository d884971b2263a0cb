"""Framing an image the way the global network learnt: the skull as large, as centred and as unsqueezed in its input
as in the training images.

The global network reads the whole image resized to its input size (800 x 640 for the shipped weights), whatever
the image's shape. ISBI 2015's cephalograms are all 2400 x 1935 pixels (240 x 193.5 mm), the skull filling most of
the frame; a landscape picture, a frame with much empty border, or a tightly cropped head is squeezed, shrunk or
blown up in that input, and the global pass misses landmarks (Test1 centred on 3000-pixel-wide canvases: 1.63 mm
against 1.47 as it is). The refinement pass reads crops at the physical pixel size and does not mind the frame.

The frame model (recorded with the shape model by ``scripts/fit_shape_model.py``: ``frame_mean_mm``,
``frame_size_mm``, ``frame_range``) says where the landmarks sit in an average training image and how far the
training images' framings range. :func:`framing` places the frame model on a set of landmarks (uniform scale and
translation, least squares) and measures how the image frames them: ``scale_y``, ``scale_x`` (the skull's size in
the frame relative to the average training image's, per axis), ``aspect`` (``scale_x / scale_y``: 1 for an
unsqueezed reading) and ``centre_y``, ``centre_x`` (where the average frame's centre lies from the image's, in units
of that frame's size). :class:`ReframeImaged` reads an image again, cut to the average frame around the global pass's
landmarks, when its framing lies outside the training range (widened by ``margin``) and the second reading is surer.
Over ISBI's 150 Train images (mean of both doctors) the scales range 0.81-1.14, the centres -0.08 to +0.06 and the
aspect is 1 (all are 2400 x 1935); none of Test1's images is read again.
"""

from __future__ import annotations

import logging
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from .engine import read_in_eval_mode
from .shape import load_shape_model
from .transforms import ScaleIntensityRangePercentilesd, mean_spread_mm, resize_image

__all__ = ["FRAME_MEASURES", "fit_frame", "framing", "fit_frame_model", "out_of_range", "crop_box", "ReframeImaged",
           "RandTightCropd", "FILLS", "check_fill"]

FRAME_MEASURES = ("scale_y", "scale_x", "aspect", "centre_y", "centre_x")
SPACING_FACTOR = 1.25  # a skull this much larger or smaller (mm) than any training skull: the pixel spacing is suspect
logger = logging.getLogger(__name__)


def fit_frame(points_mm: np.ndarray, reference_mm: np.ndarray) -> tuple[float, np.ndarray]:
    """``(s, t)`` of the least-squares fit ``points ~ s * reference + t`` (uniform scale, translation; ``(N, 2)``
    ``(y, x)`` mm): where the average frame, scaled by ``s``, starts (``t``) in the image."""
    p, q = np.asarray(points_mm, float), np.asarray(reference_mm, float)
    if p.shape != q.shape or p.ndim != 2 or p.shape[-1] != 2:
        raise ValueError(f"fit_frame needs two (N, 2) landmark sets of the same N, got {p.shape} and {q.shape}.")
    qc, pc = q - q.mean(0), p - p.mean(0)
    norm = float((qc**2).sum())
    if norm <= 0:
        raise ValueError("fit_frame needs a reference of two distinct points.")
    s = float((qc * pc).sum()) / norm
    return s, p.mean(0) - s * q.mean(0)


def framing(points_mm: np.ndarray, extent_mm: Sequence[float], model: dict) -> dict:
    """How an image of ``extent_mm`` ``(H, W)`` frames the landmarks ``points_mm``, against the frame model: the
    measures :data:`FRAME_MEASURES` (module docstring), ``box_mm``, the average frame placed on the landmarks
    (``[y0, x0, y1, x1]`` mm), and ``skull_scale``, the skull's size in mm relative to the average training image's
    (far from 1 when the pixel spacing is wrong: unlike the other measures it depends on it)."""
    size = np.asarray(model["frame_size_mm"], float)
    extent = np.asarray(extent_mm, float)
    s, t = fit_frame(points_mm, np.asarray(model["frame_mean_mm"], float))
    if s <= 0:
        raise ValueError("the landmarks do not fit the frame model with a positive scale.")
    box = s * size
    scale = box / extent
    centre = (t + box / 2 - extent / 2) / box
    return {"scale_y": float(scale[0]), "scale_x": float(scale[1]), "aspect": float(scale[1] / scale[0]), "skull_scale": s,
            "centre_y": float(centre[0]), "centre_x": float(centre[1]), "box_mm": [*map(float, t), *map(float, t + box)]}


def fit_frame_model(shapes_mm: Sequence[np.ndarray], extents_mm: Sequence[Sequence[float]]) -> dict:
    """The frame model of training images: ``frame_mean_mm`` ``(N, 2)`` (the landmarks' mean position in their
    images, mm), ``frame_size_mm`` (the images' mean ``(H, W)``, mm) and ``frame_range`` (the min and max of each of
    :data:`FRAME_MEASURES` over the training images)."""
    shapes, extents = np.asarray(shapes_mm, float), np.asarray(extents_mm, float)
    if shapes.ndim != 3 or len(shapes) < 2 or extents.shape != (len(shapes), 2):
        raise ValueError(f"fit_frame_model needs (M >= 2, N, 2) landmark sets and (M, 2) extents, got {shapes.shape} "
                         f"and {extents.shape}.")
    model = {"frame_mean_mm": shapes.mean(0), "frame_size_mm": extents.mean(0)}
    measures = [framing(p, e, model) for p, e in zip(shapes, extents)]
    return {"frame_mean_mm": np.round(model["frame_mean_mm"], 4).tolist(),
            "frame_size_mm": np.round(model["frame_size_mm"], 4).tolist(),
            "frame_range": {k: [round(min(m[k] for m in measures), 4), round(max(m[k] for m in measures), 4)]
                            for k in (*FRAME_MEASURES, "skull_scale")}}


def out_of_range(measures: dict, frame_range: dict, margin: float) -> list[str]:
    """The measures outside the training range widened by ``margin`` (the scales and the aspect by a factor
    ``1 + margin``, the centres by ``margin`` frame sizes), each as ``"name value (range lo-hi)"``."""
    out = []
    for k in FRAME_MEASURES:
        lo, hi = frame_range[k]
        lo, hi = (lo / (1 + margin), hi * (1 + margin)) if k in ("scale_y", "scale_x", "aspect") else (lo - margin, hi + margin)
        if not lo <= measures[k] <= hi:
            out.append(f"{k} {measures[k]:.2f} (range {lo:.2f} to {hi:.2f})")
    return out


FILLS = ("zeros", "edge", "median")


def check_fill(fill: str) -> str:
    """``fill`` when it is one of :data:`FILLS`, else a ``ValueError`` naming them."""
    if fill not in FILLS:
        raise ValueError(f"fill should be one of {FILLS}, got {fill!r}.")
    return fill


def crop_box(image: torch.Tensor, box: Sequence[int], fill: str = "zeros") -> torch.Tensor:
    """``image[..., y0:y1, x0:x1]`` of a ``(C, H, W)`` image; where the box ``[y0, x0, y1, x1]`` (whole pixels)
    leaves the image, ``fill``: ``zeros``, ``edge`` (the nearest edge pixel repeated) or ``median`` (the image's
    median value)."""
    check_fill(fill)
    y0, x0, y1, x1 = (int(v) for v in box)
    c, h, w = image.shape
    if fill == "edge":
        ys = torch.arange(y0, y1, device=image.device).clamp(0, h - 1)
        xs = torch.arange(x0, x1, device=image.device).clamp(0, w - 1)
        return image[:, ys][:, :, xs]
    out = image.new_zeros((c, y1 - y0, x1 - x0))
    if fill == "median":
        out += image.flatten(1).median(dim=1).values[:, None, None]
    sy0, sx0, sy1, sx1 = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        out[:, sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = image[:, sy0:sy1, sx0:sx1]
    return out


class ReframeImaged(Transform):
    """Post-processing, after the decoding: read an image again, framed as the training images were, when the global
    pass's landmarks show it framed otherwise. :class:`~bundle.orientation.OrientImaged` applies it to the reading it
    chooses (``reframe`` there); the orientation itself is chosen on readings of the whole image, because a wrong
    reading, framed around its misplaced landmarks, can look sure.

    Measures the framing of the decoded global landmarks (:func:`framing`). When a measure lies outside the frame
    model's training range widened by ``margin`` (``always``: every image, once at least), cuts the average frame
    placed on those landmarks from the refinement pass's copy of the image (``image_fine``; outside the image ``fill``),
    resizes it to the network input, scales its intensities as the input was, runs the global network on it, and
    decodes that with the same ``decode``. The new reading replaces the old when its mean heatmap spread is not
    larger, and is measured in turn, up to ``iterations`` times (a first pass lost in a wide frame finds the skull
    roughly, the next reads it framed). The heatmap's grid is recorded as ``pred_frame`` ``(2, 2)`` (origin in
    original pixels, pixels per original pixel), which the decoding and the refinement's coarse fusion read instead
    of ``scale``. Writes ``framing`` (the measures of the reading kept, a dict), ``reframed`` (how many times it
    was read again in the training frame and kept: 0 for an image framed as in training) and ``widened`` (the factor
    of the wider frame whose reading was kept, ``widen`` below; 0 for none).

    Args:
        network, inferer, decode: the global network, how the evaluator runs it, and the decoding before this.
        frame_model: a shape model with the frame model's entries (path or dict); None (or one without them): off.
        margin: how far outside the training range a framing must lie before the image is read again.
        always: read every image again at least once (for measurement), not only those outside the range.
        iterations: the most times one image is read again.
        sure_spread_mm: the pixel-spacing check only judges a reading at least this sure (mean heatmap spread):
            the landmarks of a lost reading say nothing of the skull's size.
        landmark_names: the run's landmarks, to check the model is for them.
        fill: what the frame holds where it leaves the image (:func:`crop_box`): ``zeros``, ``edge`` or ``median``.
        intensity: the intensity scaling of the global network's input, applied to the reframed crop as to the image:
            a dictionary transform, applied to its first key (the configs pass the one of their input chain); None:
            the 0.5-99.5 percentiles to [0, 1], clipped, as ``configs/train.yaml``.
        widen: factors larger than 1; when the reading kept is still unsure (mean heatmap spread above
            ``sure_spread_mm``), the image is also read in the middle of a frame each factor times its size
            (``fill`` beyond it; in every orientation :class:`~bundle.orientation.OrientImaged` read), and the surest
            of those readings, if surer, replaces it and is reframed in turn. Empty: off.
    """

    def __init__(self, network: torch.nn.Module, inferer, decode, frame_model=None, margin: float = 0.1,
                 always: bool = False, iterations: int = 3, sure_spread_mm: float = 15.0,
                 landmark_names: Sequence[str] | None = None, fill: str = "zeros", intensity=None,
                 widen: Sequence[float] = (), pred_key: str = "pred", image_key: str = "image_fine"):
        check_fill(fill)
        widen = tuple(float(f) for f in (widen or ()))
        if any(not f > 1 for f in widen):
            raise ValueError(f"widen should hold factors larger than 1 (a frame that many times the image), got "
                             f"{list(widen)}.")
        if margin < 0:
            raise ValueError(f"margin should be 0 or more, got {margin}.")
        if iterations < 1:
            raise ValueError(f"iterations should be 1 or more, got {iterations}.")
        model = load_shape_model(frame_model, landmark_names)
        if model is not None and not all(k in model for k in ("frame_mean_mm", "frame_size_mm", "frame_range")):
            logger.warning("the shape model has no frame model (fitted before 0.5.4): reframing off; fit it again "
                           "with scripts/fit_shape_model.py")
            model = None
        self.network, self.inferer, self.decode, self.model = network, inferer, decode, model
        self.margin, self.always, self.iterations = float(margin), bool(always), int(iterations)
        self.sure_spread_mm = float(sure_spread_mm)
        self.fill, self.widen = fill, widen
        self.pred_key, self.image_key = pred_key, image_key
        if intensity is None:
            intensity = ScaleIntensityRangePercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
        if not isinstance(intensity, MapTransform):
            raise TypeError(f"intensity should be a dictionary transform (as in the config's input chain), got "
                            f"{type(intensity).__name__}.")
        self.intensity = intensity

    def measure(self, d: Mapping) -> tuple[dict | None, list[str]]:
        """The framing measures of an item's decoded landmarks in the frame the global network read (the image, or
        the box of an earlier reading again), ``box_mm`` in mm of the image, and the measures outside the widened
        training range; ``(None, [])`` when the frame model fits the landmarks only mirrored or shrunk to a point."""
        spacing = torch.as_tensor(d["spacing"]).double().cpu().numpy()
        if "pred_frame" in d:  # read again: the box that was read
            frame = torch.as_tensor(d["pred_frame"]).double().cpu().numpy()
            size = np.asarray(torch.as_tensor(d[self.pred_key]).shape[-2:], float)
            origin, extent = frame[0] * spacing, size / frame[1] * spacing
        else:
            origin, extent = np.zeros(2), torch.as_tensor(d["orig_size"]).double().cpu().numpy() * spacing
        try:
            measures = framing(torch.as_tensor(d["pred_mm"]).double().cpu().numpy() - origin, extent, self.model)
        except ValueError:  # landmarks no frame fits (a reading that is lost): nothing to frame them by
            return None, []
        measures["box_mm"] = (np.asarray(measures["box_mm"]) + np.tile(origin, 2)).tolist()
        return measures, out_of_range(measures, self.model["frame_range"], self.margin)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        return self.frame(data)[0]

    def frame(self, data: Mapping[Hashable, object], others: Sequence[Mapping] = ()) -> tuple[dict, int]:
        """The item framed (``__call__``), and which reading it comes from: 0 for ``data``'s, ``i`` for
        ``others[i - 1]``'s. ``others`` are other readings of the whole image (:class:`~bundle.orientation.OrientImaged`
        passes the other orientations it read): when the item stays unsure and ``widen`` is set, each is read widened
        too, and the surest widened reading wins whichever it comes from."""
        d = dict(data)
        d["reframed"], d["widened"] = 0, 0.0
        if self.model is None or "pred_mm" not in d or self.image_key not in d:
            return d, 0
        name = d.get("image_name", "image")
        measures, outside = self.measure(d)
        if measures is not None:  # None: a reading lost enough that no frame fits its landmarks
            first_outside, first_spread = outside, mean_spread_mm(d)
            d, measures = self._settle(d, measures, outside)
            why = "; ".join(first_outside) or "always"
            if d["reframed"]:
                logger.info("%s: framed unlike the training images (%s): read again in their frame (mean heatmap "
                            "spread %.1f mm against %.1f%s)", name, why, mean_spread_mm(d),
                            first_spread, f", {d['reframed']} times" if d["reframed"] > 1 else "")
            elif first_outside or self.always:
                logger.info("%s: framed unlike the training images (%s), but read again in their frame it is less "
                            "sure: kept as it is", name, why)
        chosen = 0
        if self.widen and not mean_spread_mm(d) <= self.sure_spread_mm:
            d, measures, chosen = self._widen(d, measures, name, others)
        if measures is not None:
            d["framing"] = {k: round(v, 4) for k, v in measures.items() if k != "box_mm"}
            self._check_spacing(d, measures, name)
        return d, chosen

    def _settle(self, d: dict, measures: dict, outside: list[str]) -> tuple[dict, dict]:
        """The reframing loop from a reading and its measures: while framed unlike training (or, ``always``, once),
        the reading of the average frame placed on its landmarks, kept when not less sure, up to ``iterations``
        times."""
        for i in range(self.iterations):
            if not outside and not (self.always and i == 0):
                break
            spacing = torch.as_tensor(d["spacing"]).double().cpu().numpy()
            other = self._read(d, np.asarray(measures["box_mm"]) / np.tile(spacing, 2))
            before = mean_spread_mm(d)
            after = mean_spread_mm(other)
            if not after <= before:  # less sure (or no number at all: a blank crop)
                break
            other_measures, outside = self.measure(other)
            if other_measures is None:
                break
            other["reframed"] = d["reframed"] + 1
            d, measures = other, other_measures
        return d, measures

    def _widen(self, d: dict, measures: dict | None, name: str,
               others: Sequence[Mapping] = ()) -> tuple[dict, dict | None, int]:
        """An item still unsure after reframing: the image read in the middle of frames ``widen`` times its size
        (``fill`` beyond it; a tightly cropped head whose lost landmarks scatter like a normal skull's, so that its
        framing looks normal, appears there at the size the network learnt), as the item reads it and as each of
        ``others`` does. The surest of those readings, compared as whole images in their wider frames, when surer
        than the item's, replaces it and is reframed in turn (:meth:`_settle`); also returns whose reading it is
        (:meth:`frame`)."""
        size = torch.as_tensor(d["orig_size"]).double().cpu().numpy()
        before, best = mean_spread_mm(d), None
        for which, item in enumerate([d, *others]):
            for f in self.widen:
                pad = (f - 1) / 2 * size
                other = self._read(item, np.concatenate([-pad, size + pad]))
                other_measures, outside = self.measure(other)
                spread = mean_spread_mm(other)
                if other_measures is not None and spread < before and (best is None or spread < best[0]):
                    best = (spread, f, which, other, other_measures, outside)
        if best is None:
            logger.info("%s: still unsure (mean heatmap spread %.1f mm), and no surer in a wider frame (%s times the "
                        "image)", name, before, ", ".join(f"{f:g}" for f in self.widen))
            return d, measures, 0
        spread, f, which, other, other_measures, outside = best
        other["reframed"], other["widened"] = 0, f  # a new reading of the whole image: earlier reframings are dropped
        other, other_measures = self._settle(other, other_measures, outside)
        logger.info("%s: still unsure (mean heatmap spread %.1f mm): read again in a frame %g times the image%s (mean "
                    "heatmap spread %.1f mm%s)", name, before, f, "" if which == 0 else " in another orientation",
                    mean_spread_mm(other), ", then in the training frame" if other["reframed"] else "")
        return other, other_measures, which

    def _check_spacing(self, d: dict, measures: dict, name: str) -> None:
        """Warn (and add to the item's ``checks``, which report.html shows) when the skull measures (in mm, through
        the pixel spacing) far larger or smaller than any training skull: the spacing the file gave or the config
        assumed is then likely wrong, and the refinement pass, which reads crops at a fixed size in mm, reads the
        wrong size."""
        lo, hi = self.model["frame_range"].get("skull_scale", (None, None))
        if lo is None or lo / SPACING_FACTOR <= measures["skull_scale"] <= hi * SPACING_FACTOR:
            return
        if not mean_spread_mm(d) <= self.sure_spread_mm:
            return  # a lost reading: OrientImaged says so
        spacing = torch.as_tensor(d["spacing"]).float().cpu()
        guess = (spacing / measures["skull_scale"]).tolist()
        check = (f"the skull measures {measures['skull_scale']:.2f} times the training images' average (they range "
                 f"{lo:.2f} to {hi:.2f}) at {spacing[0]:.3g} x {spacing[1]:.3g} mm per pixel: check the pixel spacing "
                 f"(the file's header, else --pixel_spacing_mm); an average skull would mean about {guess[0]:.3g} x "
                 f"{guess[1]:.3g} mm")
        logger.warning("%s: %s", name, check)
        d["checks"] = [*d.get("checks", []), check]  # report.html shows it with the image

    def _read(self, d: dict, box_px: np.ndarray) -> dict:
        """The item as the global network reads the average frame ``box_px`` (original pixels, ``[y0, x0, y1,
        x1]``), decoded."""
        fine = torch.as_tensor(d[self.image_key]).float()
        fine_scale = torch.as_tensor(d[self.image_key + "_scale"]).double().cpu()
        pred = torch.as_tensor(d[self.pred_key])
        size = pred.shape[-2:]
        corner = np.floor(np.asarray(box_px[:2]) * fine_scale.numpy()).astype(int)  # fine pixels
        extent = np.maximum(np.round((box_px[2:] - box_px[:2]) * fine_scale.numpy()).astype(int), 8)
        crop = crop_box(fine.cpu(), [*corner, *(corner + extent)], self.fill)
        net_input, factor = resize_image(crop, size)
        key = self.intensity.keys[0]  # scaled as the network input was
        net_input = torch.as_tensor(self.intensity({key: net_input})[key])
        other = dict(d)
        other[self.pred_key] = read_in_eval_mode(self.network, self.inferer, net_input).to(pred.device)
        frame_scale = factor.double() * fine_scale
        origin = torch.as_tensor(corner, dtype=torch.float64) / fine_scale
        other["pred_frame"] = torch.stack([origin, frame_scale]).float()
        return self.decode(other)


class RandTightCropd(Randomizable, MapTransform):
    """Training augmentation: the picture cut to a random box around its landmarks, and ``fill`` (by default its
    edge pixels repeated) beyond the box, in the same frame; the landmarks do not move. This is what
    :class:`ReframeImaged` gives the global network when it reads a tightly cropped head again in the training
    frame, which a network trained on whole ISBI pictures has never seen.

    Each side of the box lies between ``min_margin`` (a fraction of the image side) beyond the outermost landmark
    and the image's edge, uniformly (a side whose landmark lies nearer the edge than that is not cut).

    Args:
        prob: probability of applying it. At 0 it draws no random numbers, so runs without it replay exactly.
        min_margin: the least margin kept around the landmarks, as a fraction of the image's height / width.
        fill: ``edge``, ``zeros`` or ``median`` (:func:`crop_box`).
    """

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.0, min_margin: float = 0.02, fill: str = "edge"):
        MapTransform.__init__(self, keys)
        check_fill(fill)
        if not 0 <= prob <= 1:
            raise ValueError(f"prob should be between 0 and 1, got {prob}.")
        if min_margin < 0:
            raise ValueError(f"min_margin should be 0 or more, got {min_margin}.")
        self.prob, self.min_margin, self.fill = float(prob), float(min_margin), fill
        self._fractions: np.ndarray | None = None

    def randomize(self, data=None) -> None:
        self._fractions = None
        if self.prob > 0 and self.R.rand() < self.prob:
            self._fractions = self.R.uniform(0.0, 1.0, 4)  # where each side lies between its least margin and the edge

    def box(self, landmarks: torch.Tensor, size) -> list[int]:
        """The drawn box ``[y0, x0, y1, x1]`` (whole pixels, inside the image) around ``landmarks`` ``(N, 2)`` ``(y,
        x)`` of an image of ``size`` ``(H, W)``."""
        h, w = int(size[0]), int(size[1])
        pts = torch.as_tensor(landmarks, dtype=torch.float64).cpu().numpy()
        lo, hi = pts.min(0), pts.max(0)
        least = self.min_margin * np.array([h, w], float)
        start = np.clip(lo - least, 0, None)  # the box's largest start and smallest end
        end = np.clip(hi + least, None, [h - 1, w - 1])
        f = self._fractions
        y0, x0 = np.floor(start * (1 - f[:2])).astype(int)  # f = 0: the least margin; f = 1: the image's edge
        y1, x1 = np.ceil(end + (np.array([h - 1, w - 1]) - end) * f[2:]).astype(int) + 1
        return [int(max(y0, 0)), int(max(x0, 0)), int(min(y1, h)), int(min(x1, w))]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if self._fractions is None or "landmarks" not in d:
            return d
        size = d[self.keys[0]].shape[-2:]
        y0, x0, y1, x1 = self.box(d["landmarks"], size)
        frame = [-y0, -x0, int(size[0]) - y0, int(size[1]) - x0]  # the whole frame, in the box's pixels
        for key in self.key_iterator(d):
            image = torch.as_tensor(d[key])
            d[key] = crop_box(crop_box(image, [y0, x0, y1, x1]), frame, self.fill)
        return d
