"""Reading an image the way the networks learnt: the face looking right, the bone bright.

The networks learnt ISBI 2015's lateral cephalograms: faces looking to the right (+x), bone bright. A radiograph
taken or exported the other way round, or as a negative (bone dark), is read mirrored and/or inverted, and its
landmarks mirrored back; without that the global network places them tens of millimetres off, with wide, uncertain
heatmaps. :class:`OrientImaged` chooses the reading per image (``face``: ``"right"``, ``"left"`` or ``"auto"``;
``bone``: ``"bright"``, ``"dark"`` or ``"auto"``) and changes what the later passes read; :class:`RestoreOrientationd`
mirrors the results back into the original image and restores the images for the overlay.

``"auto"`` costs nothing for an image the global pass reads confidently: only when the mean over landmarks of its
decoded heatmap spread (``spread_mm`` of :class:`~bundle.transforms.HeatmapToLandmarksd`, the RMS distance of each
softmax from its landmark) exceeds ``auto_spread_mm`` are the other readings tried (mirrored, inverted, both: one
global pass each, until one is sure) and the one with the smallest spread kept. ``scripts/image_orientation.py``
measures the spreads on cross-validation images read every way, which is where the default threshold comes from.
"""

from __future__ import annotations

import logging
from typing import Hashable, Mapping, Sequence

import torch
from monai.transforms import Transform

from .engine import read_in_eval_mode
from .transforms import mean_spread_mm


__all__ = ["FACES", "BONES", "READINGS", "orient", "describe", "OrientInputd", "OrientImaged", "RestoreOrientationd"]

FACES = ("right", "left", "auto")
BONES = ("bright", "dark", "auto")
READINGS = ((False, False), (True, False), (False, True), (True, True))  # (mirrored, inverted): as read first
TIE_MM = 1e-3  # readings whose mean spreads differ by less are equally sure (float rounding differs between CPUs)
logger = logging.getLogger(__name__)


def orient(image, mirrored: bool, inverted: bool) -> torch.Tensor:
    """An intensity-scaled ``(C, H, W)`` image (values in [0, 1]) mirrored left to right and/or inverted (``1 - x``:
    exactly what the percentile scaling gives for the inverted file). Each is its own inverse."""
    image = torch.as_tensor(image)
    if mirrored:
        image = torch.flip(image, [-1])
    return 1.0 - image if inverted else image


def check_settings(face: str, bone: str) -> tuple[str, str]:
    face, bone = str(face).lower(), str(bone).lower()
    if face not in FACES:
        raise ValueError(f"face should be one of {FACES} (the way the faces look in the images), got {face!r}.")
    if bone not in BONES:
        raise ValueError(f"bone should be one of {BONES} (bright, as usual, or dark in a negative), got {bone!r}.")
    return face, bone


class OrientInputd(Transform):
    """Pre-processing, last: read the image the way ``face: left`` / ``bone: dark`` ask before the evaluator's own
    global pass, so that pass is the one used (without it, that pass read the image as it is for nothing and
    :class:`OrientImaged` read it again). Mirrors and/or inverts the intensity-scaled images in ``image_keys`` and
    records ``preoriented`` ``(2,)`` (bools: mirrored, inverted), which :class:`OrientImaged` takes as its starting
    reading. ``"auto"`` and the trained ``right`` / ``bright`` change nothing here."""

    def __init__(self, face: str = "auto", bone: str = "auto", image_keys: Sequence[str] = ("image", "image_fine")):
        face, bone = check_settings(face, bone)
        self.reading, self.image_keys = (face == "left", bone == "dark"), tuple(image_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.reading == (False, False):
            return d
        for key in self.image_keys:
            if key in d:
                d[key] = orient(d[key], *self.reading)
        d["preoriented"] = torch.tensor(self.reading)
        return d


class OrientImaged(Transform):
    """Post-processing, right after the decoding: read an image the way the networks learnt.

    The item holds the global network's reading of the image as it is (``data["pred"]``; or as :class:`OrientInputd`
    already read it, ``preoriented``), decoded. When ``face`` / ``bone`` ask for another reading, or ``"auto"`` finds
    this one unsure (mean ``spread_mm`` above ``auto_spread_mm``) and another surer (the others are read in turn
    until one is sure: mirrored, inverted, both), the item is replaced by the global network's reading of the image mirrored and/or inverted, decoded by the
    same ``decode``, with the images in ``image_keys`` (the network input and the refinement pass's copy) changed the
    same way, so the crop centres and the refinement read a face looking right with bright bone. With ``reframe``
    (a :class:`~bundle.framing.ReframeImaged`) the reading chosen is then framed as the training images were, when it
    is not, and the warning for an image no reading makes sure looks at the framed reading. The orientation is
    chosen on the readings of the whole image: framed, a wrong reading can look sure (a crop around misplaced
    landmarks, zoomed in), which the whole image's readings are not (Test1 mirrored: 10.5 mm when the readings
    were framed before being compared, 1.47 mm otherwise). Writes ``mirrored`` and ``inverted`` (bools) and
    ``reading_spread_mm`` ``(4,)``: the mean spread of the whole image as read, mirrored, inverted and both (NaN
    where not read).

    Args:
        network: the global network; inferer: how the evaluator runs it (``AutocastInferer`` / ``TTAInferer``).
        decode: the decoding that precedes this transform (:class:`~bundle.transforms.HeatmapToLandmarksd`).
        face: ``"right"`` (as trained), ``"left"`` (always mirrored) or ``"auto"``.
        bone: ``"bright"`` (as trained), ``"dark"`` (a negative: always inverted) or ``"auto"``.
        auto_spread_mm: above this mean spread ``"auto"`` tries the other readings.
        reframe: None, or the :class:`~bundle.framing.ReframeImaged` applied to the reading chosen. When that stays
            unsure and it has ``widen`` factors, the other orientations read are read widened too, and the surest
            widened whole image decides the orientation (``mirrored`` / ``inverted`` then say which).
    """

    def __init__(self, network: torch.nn.Module, inferer, decode, face: str = "right", bone: str = "bright",
                 auto_spread_mm: float = 15.0, reframe=None, pred_key: str = "pred",
                 image_keys: Sequence[str] = ("image", "image_fine")):
        face, bone = check_settings(face, bone)
        if auto_spread_mm <= 0:
            raise ValueError(f"auto_spread_mm should be positive, got {auto_spread_mm}.")
        self.network, self.inferer, self.decode, self.face, self.bone = network, inferer, decode, face, bone
        self.auto_spread_mm, self.pred_key, self.image_keys = float(auto_spread_mm), pred_key, tuple(image_keys)
        self.reframe = reframe

    def _read(self, d: dict, reading: tuple[bool, bool]) -> dict:
        """The item as the global network reads the image mirrored and/or inverted, decoded."""
        other = dict(d)
        out = read_in_eval_mode(self.network, self.inferer, orient(d["image"], *reading))
        other[self.pred_key] = out.to(torch.as_tensor(d[self.pred_key]).device)
        for key in self.image_keys:
            if key in d:
                other[key] = orient(d[key], *reading)
        return self.decode(other)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        spreads = torch.full((len(READINGS),), float("nan"))
        base = (self.face == "left", self.bone == "dark")
        candidates = [base]
        if self.face == "auto":
            candidates.append((not base[0], base[1]))
        if self.bone == "auto":
            candidates += [(base[0], not base[1])] + ([(not base[0], not base[1])] if self.face == "auto" else [])
        items = {}
        # the reading the input already is (OrientInputd: face left / bone dark applied before the evaluator's pass)
        pre = tuple(bool(v) for v in torch.as_tensor(d.get("preoriented", (False, False))).flatten().tolist())

        def item(reading: tuple[bool, bool]) -> dict:
            if reading not in items:
                change = (reading[0] != pre[0], reading[1] != pre[1])  # from the input as it is
                items[reading] = d if change == (False, False) else self._read(d, change)
            return items[reading]

        def spread(reading: tuple[bool, bool]) -> float:
            i = READINGS.index(reading)
            if torch.isnan(spreads[i]):
                spreads[i] = mean_spread_mm(item(reading))
            return float(spreads[i])

        chosen = base
        if len(candidates) > 1 and spread(base) > self.auto_spread_mm:
            for reading in candidates[1:]:  # the first sure reading ends the search (mirrored ones first)
                if spread(reading) <= self.auto_spread_mm:
                    break
            for reading in candidates[1:]:  # the surest; of equals (within TIE_MM) the first: the one asked for
                if reading in items and spread(reading) < spread(chosen) - TIE_MM:
                    chosen = reading
            name = d.get("image_name", "image")
            if chosen != base:
                logger.info("%s: read %s (mean heatmap spread %.1f mm, against %.1f mm as %s)", name, describe(chosen),
                            spread(chosen), spread(base), describe(base))
        out = dict(item(chosen))
        if self.reframe is not None:  # a reading still unsure may be read widened in any orientation read
            others = [r for r in candidates if r in items and r != chosen]
            out, which = self.reframe.frame(out, [items[r] for r in others])
            if which:
                chosen = others[which - 1]
                logger.info("%s: in the wider frame it reads surest %s", d.get("image_name", "image"),
                            "as it is" if chosen == (False, False) else describe(chosen))
        final = mean_spread_mm(out) if "spread_mm" in out else 0.0
        if len(candidates) > 1 and final > self.auto_spread_mm:
            check = (f"the global pass is unsure of this image however it is read (mean heatmap spread {final:.1f} "
                     "mm): check its landmarks")
            logger.warning("%s: %s", d.get("image_name", "image"), check)
            out["checks"] = [*out.get("checks", []), check]  # report.html shows it with the image
        out["mirrored"], out["inverted"] = chosen
        out["reading_spread_mm"] = spreads
        return out


def describe(reading: tuple[bool, bool]) -> str:
    """``"mirrored"``, ``"inverted"``, ``"mirrored and inverted"`` or ``"it is"``, for the logs and the report."""
    words = [w for w, on in zip(("mirrored", "inverted"), reading) if on]
    return " and ".join(words) if words else "it is"


class RestoreOrientationd(Transform):
    """Post-processing, last: where :class:`OrientImaged` mirrored the image, mirror the results back into the
    original image (``x -> W - 1 - x`` for the ``(N, 2)`` ``(y, x)`` pixel keys, ``(W - 1) * spacing_x - x`` for the
    mm keys, ``W`` the original width); and restore the mirrored or inverted images (the overlay shows the image as
    it is)."""

    def __init__(self, pixel_keys: Sequence[str] = ("pred_landmarks", "coarse_landmarks", "uncorrected_landmarks"),
                 mm_keys: Sequence[str] = ("pred_mm",), image_keys: Sequence[str] = ("image", "image_fine")):
        self.pixel_keys, self.mm_keys, self.image_keys = tuple(pixel_keys), tuple(mm_keys), tuple(image_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        mirrored, inverted = bool(d.get("mirrored", False)), bool(d.get("inverted", False))
        if mirrored:
            last_x = float(torch.as_tensor(d["orig_size"])[1]) - 1.0
            spacing_x = float(torch.as_tensor(d["spacing"])[1])
            for keys, right_edge in ((self.pixel_keys, last_x), (self.mm_keys, last_x * spacing_x)):
                for key in keys:
                    if key in d:
                        p = torch.as_tensor(d[key]).clone()
                        p[..., 1] = right_edge - p[..., 1]
                        d[key] = p
        if mirrored or inverted:
            for key in self.image_keys:
                if key in d:
                    d[key] = orient(d[key], mirrored, inverted)
        return d
