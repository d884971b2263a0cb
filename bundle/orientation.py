"""Which way the face looks.

The networks learnt lateral cephalograms whose face looks to the right (+x), as in ISBI 2015. A radiograph taken or
exported the other way round is read mirrored and its landmarks mirrored back; without that the global network
places them tens of millimetres off (with a wide, uncertain heatmap). :class:`OrientFaced` decides per image
(``face``: ``"right"``, ``"left"`` or ``"auto"``) and mirrors what the later passes use; :class:`UnmirrorLandmarksd`
mirrors the results back into the original image.

``"auto"`` costs nothing for an image the global pass reads confidently: only when the mean spread of its heatmaps
(:func:`mean_spread_mm`) exceeds ``auto_spread_mm`` is the mirrored image read too, and the reading with the
smaller spread kept. ``scripts/face_orientation.py`` measures both spreads on cross-validation images and their
mirrors, which is where the default threshold comes from.
"""

from __future__ import annotations

import logging
from typing import Hashable, Mapping, Sequence

import torch
from monai.transforms import Transform

from .heatmaps import heatmap_spread, heatmap_to_landmarks

__all__ = ["FACES", "mean_spread_mm", "OrientFaced", "UnmirrorLandmarksd"]

FACES = ("right", "left", "auto")
logger = logging.getLogger(__name__)


def _finest(logits) -> torch.Tensor:
    logits = torch.as_tensor(logits).detach().float().cpu()
    return logits[0] if logits.ndim == 4 else logits  # a deep-supervision stack (S, N, h, w): the finest first


def mean_spread_mm(logits, scale, spacing) -> float:
    """The mean over landmarks of the heatmap spread (RMS distance of the softmax mass from the decoded point,
    :func:`~bundle.heatmaps.heatmap_spread`), in mm: small when the global network is sure of every landmark.

    Args:
        logits: ``(N, h, w)`` heatmap logits (or a deep-supervision stack, finest first).
        scale: ``(2,)`` heatmap pixels per original pixel; spacing: ``(2,)`` mm per original pixel.
    """
    logits = _finest(logits)
    pts, _ = heatmap_to_landmarks(logits[None], refine="quadratic", log_scale=True)
    pixel_mm = (torch.as_tensor(spacing).float().cpu() / torch.as_tensor(scale).float().cpu()).mean()
    return float(heatmap_spread(logits[None], pts)[0].mean() * pixel_mm)


class OrientFaced(Transform):
    """Post-processing, first (before the decoding): read a face that looks left mirrored.

    With ``face="left"``, or ``"auto"`` when the mean spread of ``data["pred"]`` exceeds ``auto_spread_mm`` and the
    mirrored image's is smaller, ``data["pred"]`` is replaced by the global network's reading of the mirrored image
    and the images in ``image_keys`` (the network input and the refinement pass's copy) are mirrored, so the decoding,
    the shape check, the crop centres and the refinement all work on a face that looks right. Writes ``mirrored``
    (bool) and ``face_spread_mm`` ``(2,)`` (the mean spread as read and mirrored; NaN where not computed).

    Args:
        network: the global network; inferer: how the evaluator runs it (``AutocastInferer`` / ``TTAInferer``).
        face: ``"right"`` (as trained: nothing is done), ``"left"`` (always mirrored) or ``"auto"``.
        auto_spread_mm: above this mean spread ``"auto"`` reads the mirrored image too.
    """

    def __init__(self, network: torch.nn.Module, inferer, face: str = "right", auto_spread_mm: float = 2.0,
                 pred_key: str = "pred", image_keys: Sequence[str] = ("image", "image_fine")):
        face = str(face).lower()
        if face not in FACES:
            raise ValueError(f"face should be one of {FACES} (the way the face looks in the images), got {face!r}.")
        if auto_spread_mm <= 0:
            raise ValueError(f"auto_spread_mm should be positive, got {auto_spread_mm}.")
        self.network, self.inferer, self.face = network, inferer, face
        self.auto_spread_mm, self.pred_key, self.image_keys = float(auto_spread_mm), pred_key, tuple(image_keys)

    def _read_mirrored(self, image: torch.Tensor) -> torch.Tensor:
        device = next(self.network.parameters()).device
        with torch.no_grad():
            out = self.inferer(torch.flip(torch.as_tensor(image), [-1])[None].to(device), self.network)
        out = out if isinstance(out, torch.Tensor) else out[0]
        return out[0]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d["mirrored"] = False
        d["face_spread_mm"] = torch.full((2,), float("nan"))
        if self.face == "right":
            return d
        scale, spacing = d["scale"], d["spacing"]
        if self.face == "auto":
            as_read = mean_spread_mm(d[self.pred_key], scale, spacing)
            d["face_spread_mm"][0] = as_read
            if as_read <= self.auto_spread_mm:
                return d
        mirrored_pred = self._read_mirrored(d["image"])
        if self.face == "auto":
            mirrored = mean_spread_mm(mirrored_pred, scale, spacing)
            d["face_spread_mm"][1] = mirrored
            if mirrored >= d["face_spread_mm"][0]:
                return d
            logger.info("%s: the face looks left (heatmap spread %.2f mm as read, %.2f mm mirrored): read mirrored",
                        d.get("image_name", "image"), float(d["face_spread_mm"][0]), mirrored)
        d[self.pred_key] = mirrored_pred.to(torch.as_tensor(d[self.pred_key]).device)
        for key in self.image_keys:
            if key in d:
                d[key] = torch.flip(torch.as_tensor(d[key]), [-1])
        d["mirrored"] = True
        return d


class UnmirrorLandmarksd(Transform):
    """Post-processing, last: where :class:`OrientFaced` mirrored the image, mirror the results back into the
    original image (``x -> W - 1 - x`` for the ``(N, 2)`` ``(y, x)`` pixel keys, ``(W - 1) * spacing_x - x`` for the
    mm keys, ``W`` the original width) and the mirrored images too (the overlay shows the image as it is)."""

    def __init__(self, pixel_keys: Sequence[str] = ("pred_landmarks", "coarse_landmarks", "uncorrected_landmarks"),
                 mm_keys: Sequence[str] = ("pred_mm",), image_keys: Sequence[str] = ("image", "image_fine")):
        self.pixel_keys, self.mm_keys, self.image_keys = tuple(pixel_keys), tuple(mm_keys), tuple(image_keys)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if not bool(d.get("mirrored", False)):
            return d
        last_x = float(torch.as_tensor(d["orig_size"])[1]) - 1.0
        spacing_x = float(torch.as_tensor(d["spacing"])[1])
        for keys, right_edge in ((self.pixel_keys, last_x), (self.mm_keys, last_x * spacing_x)):
            for key in keys:
                if key in d:
                    p = torch.as_tensor(d[key]).clone()
                    p[..., 1] = right_edge - p[..., 1]
                    d[key] = p
        for key in self.image_keys:
            if key in d:
                d[key] = torch.flip(torch.as_tensor(d[key]), [-1])
        return d
