"""Coarse-to-fine localisation: a second network refines each landmark on a high-resolution crop around the
global model's estimate.

The global model sees the whole skull at low resolution (0.3–0.6 mm pixels) and finds every landmark roughly. The
refinement network sees one small crop per landmark, cut from the image resampled to ``spacing_mm`` (0.2 mm by
default, twice the resolution of the 800 x 640 global model), and places the landmark within it. It is trained on
crops centred near the true landmark, displaced at random as a global estimate would be; at inference the crops
are centred on the global estimates.

One network serves all landmarks: it has one output channel per landmark, and the crop of landmark ``k`` is read
from channel ``k`` (:class:`LandmarkCropNet`).
"""

from __future__ import annotations

import zlib
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, Transform

from .engine import autocast_dtype
from .heatmaps import heatmap_spread, heatmap_to_landmarks
from .transforms import (
    affine_warp,
    expected_error_mm,
    heatmap_grid,
    original_from_resized,
    parse_calibration,
    resize_image,
    resized_from_original,
    sample_at,
    similarity_matrix,
)

__all__ = ["LandmarkCropNet", "refinement_unet", "ResampleToSpacingd", "LandmarkCropsd", "RefineLandmarksd", "crop_pixels", "extract_crops", "context_image", "context_factors"]


def refinement_unet(
    out_channels: int,
    context_factor: float | Sequence[float] = 0.0,
    channels: Sequence[int] = (32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2),
    num_res_units: int = 2,
    dropout: float = 0.0,
) -> torch.nn.Module:
    """The refinement network's backbone, one definition for training (``configs/refine.yaml``), evaluation and
    inference: MONAI's 2D ``UNet`` with one output channel per landmark and one input channel for the crop, plus
    one per context crop (:func:`context_factors`: none, one factor above 1, or a list of them; :class:`LandmarkCropsd`). The defaults are the shipped
    network's (``models/refine.pt``); the other arguments are there for experiments (``--network_def#channels``).
    """
    from monai.networks.nets import UNet

    return UNet(
        spatial_dims=2,
        in_channels=1 + len(context_factors(context_factor)),
        out_channels=int(out_channels),
        channels=tuple(channels),
        strides=tuple(strides),
        num_res_units=int(num_res_units),
        dropout=float(dropout),
    )


class LandmarkCropNet(torch.nn.Module):
    """A heatmap network with one output channel per landmark, used on crops: ``forward(x, index)`` returns for
    each crop ``b`` only channel ``index[b]``, ``(B, 1, H, W)``; without ``index`` all channels.

    Args:
        backbone: any network mapping ``(B, C, H, W)`` to ``(B, N, H, W)`` logits.
    """

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        out = self.backbone(x)
        if index is None:
            return out
        idx = torch.as_tensor(index, device=out.device).reshape(-1).long()
        if idx.numel() != out.shape[0]:
            raise ValueError(f"got {idx.numel()} landmark indices for {out.shape[0]} crops.")
        return out[torch.arange(out.shape[0], device=out.device), idx][:, None]

    @classmethod
    def build(cls, backbone: torch.nn.Module, ensemble: Sequence[str] = (), device: str | torch.device = "cpu"):
        """The refinement network of evaluation and inference: ``LandmarkCropNet(backbone)`` (weights loaded later by
        a ``CheckpointLoader``), or with checkpoint paths in ``ensemble`` one over the
        :class:`~bundle.engine.EnsembleNetwork` of those checkpoints (loaded here, strictly)."""
        if not ensemble:
            return cls(backbone).to(device)
        from .engine import EnsembleNetwork

        return cls(EnsembleNetwork.from_checkpoints(cls(backbone), ensemble, device))


class ResampleToSpacingd(MapTransform):
    """Resample the image (anti-aliased bilinear) so that a pixel measures ``spacing_mm``, from ``data["spacing"]``.

    With ``output_key`` unset the image, its landmarks and ``scale`` change in place (training: the refinement
    grid is the working frame). With ``output_key`` set, the resampled copy goes to ``data[output_key]`` and its
    pixels per original pixel to ``data[output_key + "_scale"]``, and nothing else changes (inference: the global
    model works on ``image``, the refinement on the copy).
    """

    def __init__(self, keys: KeysCollection = "image", spacing_mm: float = 0.2, output_key: str | None = None):
        super().__init__(keys)
        if spacing_mm <= 0:
            raise ValueError(f"spacing_mm should be positive, got {spacing_mm}.")
        self.spacing_mm, self.output_key = float(spacing_mm), output_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        key = self.keys[0]
        spacing = torch.as_tensor(d["spacing"], dtype=torch.float32)
        in_size = torch.tensor(d[key].shape[-2:], dtype=torch.float32)
        out, factor = resize_image(d[key], [max(8, int(round(float(s)))) for s in in_size * spacing / self.spacing_mm])
        if self.output_key is not None:
            d[self.output_key] = out
            d[self.output_key + "_scale"] = d.get("scale", torch.ones(2)) * factor
            return d
        d[key] = out
        if "landmarks" in d:
            d["landmarks"] = resized_from_original(d["landmarks"], factor)
        d["scale"] = d.get("scale", torch.ones(2)) * factor
        return d


def crop_pixels(centres: torch.Tensor, crop_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Source coordinates ``(y, x)``, each ``(N, h, w)``, of the pixels of axis-aligned crops of ``crop_size``
    centred on ``centres`` ``(N, 2)``: crop pixel ``(i, j)`` is source pixel ``centre - (size - 1) / 2 + (i, j)``."""
    h, w = int(crop_size[0]), int(crop_size[1])
    c = centres.float()
    ys = torch.arange(h, dtype=torch.float32, device=c.device) - (h - 1) / 2
    xs = torch.arange(w, dtype=torch.float32, device=c.device) - (w - 1) / 2
    return (c[:, 0, None, None] + ys[None, :, None]).expand(-1, h, w), (c[:, 1, None, None] + xs[None, None, :]).expand(-1, h, w)


def extract_crops(image: torch.Tensor, centres: torch.Tensor, crop_size: Sequence[int]) -> torch.Tensor:
    """Axis-aligned crops ``(N, C, h, w)`` of a ``(C, H, W)`` image around ``centres`` ``(N, 2)`` ``(y, x)``
    (:func:`crop_pixels`; bilinear, zeros outside the image)."""
    gy, gx = crop_pixels(centres.to(image.device), crop_size)
    return sample_at(image[None].expand(len(centres), -1, -1, -1), gy, gx)


def context_factors(factor: float | Sequence[float] | None) -> list[float]:
    """The shrink factors of the context channels that ``context_factor`` asks for: none for ``0`` / ``None`` / a
    number up to 1 (off), ``[f]`` for one number ``f`` above 1, and every factor of a list (each must be above 1)."""
    if factor is None or isinstance(factor, str) and factor.strip().lower() in ("", "none", "null"):
        return []
    if isinstance(factor, (int, float)) or (isinstance(factor, torch.Tensor) and factor.ndim == 0):
        return [float(factor)] if float(factor) > 1 else []
    factors = [float(f) for f in factor]
    if any(f <= 1 for f in factors):
        raise ValueError(f"context factors must each be above 1 (a list), got {factors}.")
    return factors


def context_image(image: torch.Tensor, factor: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The image shrunk ``factor`` times (anti-aliased), and its pixels per pixel of ``image`` (``(2,)``): the grid the
    context channel of the crops is cut from (:class:`LandmarkCropsd` and :class:`RefineLandmarksd` alike)."""
    size = [max(8, int(round(float(s) / factor))) for s in image.shape[-2:]]
    return resize_image(image, size)


def load_real_offsets(offsets: str | Mapping | None) -> dict:
    """``{image_name: (N, 2) (dy, dx) mm}`` from a dict or the JSON file ``scripts/real_crop_offsets.py`` writes
    (its ``offsets_mm`` entry); None / "" / "null": empty."""
    from .io import read_model_json

    offsets, _ = read_model_json(dict(offsets) if isinstance(offsets, Mapping) else offsets, "real crop offsets",
                                 "scripts/real_crop_offsets.py")
    if offsets is None:
        return {}
    offsets = offsets.get("offsets_mm", offsets)
    return {str(name): np.asarray(v, dtype=np.float64).reshape(-1, 2) for name, v in offsets.items()}


class LandmarkCropsd(Randomizable, MapTransform):
    """One crop per landmark, centred near it, as a list of data dictionaries (MONAI flattens such lists into
    the batch).

    The crop centre is the landmark displaced by a Gaussian offset (``offset_sd`` pixels per axis, clipped to
    ``max_offset``): the error a global estimate would have. With ``random=True`` (training) offsets, rotation
    (``rotate_range`` radians) and magnification (``scale_range``) are drawn afresh each time; with
    ``random=False`` (validation) the offsets come from a generator seeded by the image name, so every validation
    sees the same crops, and there is no rotation or magnification.

    Each output holds ``image`` ``(C, h, w)``, ``landmarks`` ``(1, 2)`` (the landmark in crop pixels),
    ``landmark_index``, ``spacing``, ``image_name``, and ``scale`` / ``landmarks_orig`` such that
    ``original_from_resized(p, scale) * spacing`` measures crop points in mm (so :class:`HeatmapToLandmarksd` and
    the radial-error metrics work on crops unchanged; the frame is shifted from the original image's, which
    does not change distances).

    Args:
        crop_size: ``(h, w)`` of the crops.
        offset_sd: SD of the centre displacement in pixels, per axis.
        max_offset: largest displacement per axis, in pixels.
        rotate_range: largest rotation in radians (training only).
        scale_range: largest relative magnification change (training only).
        far_fraction: share of the crops whose centre is instead drawn uniformly from the disk of radius
            ``far_offset`` pixels around the landmark (the global pass's rarer far misses, which a Gaussian of
            ``offset_sd`` almost never shows); 0: off.
        far_offset: radius of that disk, in pixels.
        real_offsets: the global pass's real misses, ``{image_name: [[dy, dx] mm, ...] per landmark}`` (a dict or a
            JSON file; ``scripts/real_crop_offsets.py`` writes one from cross-validation evaluations): where the
            pipeline would centre each crop relative to the truth, on an image it did not train on.
        real_fraction: share of the crops (training, images in ``real_offsets``) centred at their real offset plus
            a Gaussian jitter of ``real_jitter`` pixels per axis (clipped to ``max_offset``); 0: off.
        real_jitter: that jitter's SD, in pixels.
        landmarks_per_image: crops per image, from a random choice of landmarks; None: one per landmark.
        random: draw new offsets each call (training) or fixed ones per image (validation).
        context_factor: above 1, each crop gets a second channel: the same crop size, centre, rotation and
            magnification cut from the image shrunk ``context_factor`` times (:func:`context_image`), so the network
            also sees ``context_factor`` times more of the skull around the landmark, at lower resolution. A list
            of factors gives one such channel each, in its order (:func:`context_factors`).
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        crop_size: Sequence[int] = (96, 96),
        offset_sd: float = 8.0,
        max_offset: float = 30.0,
        rotate_range: float = 0.17,
        scale_range: float = 0.1,
        landmarks_per_image: int | None = None,
        random: bool = True,
        context_factor: float | Sequence[float] = 0.0,
        far_fraction: float = 0.0,
        far_offset: float = 0.0,
        real_offsets: str | Mapping | None = None,
        real_fraction: float = 0.0,
        real_jitter: float = 2.0,
    ):
        MapTransform.__init__(self, keys)
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        if max_offset >= min(self.crop_size) / 2:
            raise ValueError(f"max_offset {max_offset} would put landmarks outside the {self.crop_size} crop.")
        if not 0.0 <= far_fraction <= 1.0:
            raise ValueError(f"far_fraction should be in [0, 1], got {far_fraction}.")
        if far_fraction and not 0 < far_offset < min(self.crop_size) / 2:
            raise ValueError(f"far_offset {far_offset} should be positive and keep landmarks inside the {self.crop_size} crop.")
        self.far_fraction, self.far_offset = float(far_fraction), float(far_offset)
        if not 0.0 <= real_fraction <= 1.0:
            raise ValueError(f"real_fraction should be in [0, 1], got {real_fraction}.")
        self.real_fraction, self.real_jitter = float(real_fraction), float(real_jitter)
        self.real_offsets = load_real_offsets(real_offsets) if real_fraction else {}
        if real_fraction and not self.real_offsets:
            raise ValueError("real_fraction needs real_offsets (scripts/real_crop_offsets.py writes them).")
        self.offset_sd, self.max_offset = float(offset_sd), float(max_offset)
        self.rotate_range, self.scale_range = float(rotate_range), float(scale_range)
        self.landmarks_per_image, self.random = landmarks_per_image, random
        self.context_factors = context_factors(context_factor)

    def randomize(self, data=None) -> None:
        pass  # draws happen in __call__, from self.R or from a per-image generator

    def __call__(self, data: Mapping[Hashable, object]) -> list[dict]:
        d = dict(data)
        key = self.keys[0]
        image = torch.as_tensor(d[key], dtype=torch.float32)
        lms = torch.as_tensor(d["landmarks"], dtype=torch.float32)
        n = len(lms)
        rng = self.R if self.random else np.random.RandomState(zlib.crc32(str(d.get("image_name", "")).encode()))
        if self.landmarks_per_image is None:
            chosen = np.arange(n)
        else:
            chosen = rng.choice(n, self.landmarks_per_image, replace=self.landmarks_per_image > n)
        base_scale = torch.as_tensor(d.get("scale", torch.ones(2)), dtype=torch.float32)
        mid = torch.tensor([(self.crop_size[0] - 1) / 2, (self.crop_size[1] - 1) / 2])  # crop centre, (y, x)
        contexts = [context_image(image, f) for f in self.context_factors]
        real = self.real_offsets.get(str(d.get("image_name", ""))) if self.random else None
        if real is not None:  # mm -> pixels of this grid
            grid_mm = (torch.as_tensor(d["spacing"], dtype=torch.float32) / base_scale).numpy()
            real = np.asarray(real, dtype=np.float64) / grid_mm
        out = []
        for k in chosen:
            offset = np.clip(rng.normal(0.0, self.offset_sd, 2), -self.max_offset, self.max_offset)
            if self.far_fraction > 0 and rng.uniform() < self.far_fraction:  # uniform over the disk
                r, a = self.far_offset * np.sqrt(rng.uniform()), rng.uniform(0.0, 2 * np.pi)
                offset = np.array([r * np.sin(a), r * np.cos(a)])
            if real is not None and rng.uniform() < self.real_fraction:  # where the pipeline would centre it
                offset = np.clip(real[k] + rng.normal(0.0, self.real_jitter, 2), -self.max_offset, self.max_offset)
            angle = rng.uniform(-self.rotate_range, self.rotate_range) if self.random and self.rotate_range else 0.0
            mag = rng.uniform(1 - self.scale_range, 1 + self.scale_range) if self.random and self.scale_range else 1.0
            centre = lms[k] + torch.as_tensor(offset, dtype=torch.float32)
            m = similarity_matrix(centre, mid, angle, mag)
            crop = [affine_warp(image, m, self.crop_size)]
            for ctx, ctx_scale in contexts:
                ctx_centre = resized_from_original(centre, ctx_scale)
                crop.append(affine_warp(ctx, similarity_matrix(ctx_centre, mid, angle, mag), self.crop_size))
            crop = torch.cat(crop)
            p = (torch.cat([lms[k].double(), torch.ones(1, dtype=torch.float64)]) @ m.T)[:2].float()[None]
            scale = base_scale * mag
            item = {
                "image": crop,
                "landmarks": p,
                "landmarks_orig": original_from_resized(p, scale),
                "landmark_index": torch.tensor(int(k)),
                "scale": scale,
                "spacing": torch.as_tensor(d["spacing"], dtype=torch.float32),
                "image_name": d.get("image_name", ""),
            }
            out.append(item)
        return out


class RefineLandmarksd(Transform):
    """Post-processing: move each decoded landmark (``pred_landmarks``, original pixels) to where the refinement
    network places it on a crop of ``data[image_key]`` around it; recompute ``pred_mm``, ``spread_mm`` (from the
    refinement heatmaps) and ``uncertainty_mm``. The coarse estimate is kept as ``coarse_landmarks``.

    Args:
        network: a :class:`LandmarkCropNet` (weights loaded by a ``CheckpointLoader``).
        crop_size: ``(h, w)``, as in training.
        image_key: the image on the refinement grid (see :class:`ResampleToSpacingd` with ``output_key``).
        iterations: refinement passes, each centred on the previous result.
        precision: ``"bf16"``, ``"fp16"``, ``"none"`` or ``"auto"`` autocast (see ``bundle.engine.autocast_dtype``).
        device: where the network runs.
        calibration: ``(a, b)`` of the expected error ``a * spread_mm + b`` (``b`` one number or one per landmark),
            or the path of an evaluation's ``calibration.json``.
        coarse_weight: how much the global model's own heatmap (``data[pred_key]``, logits) counts in the crop:
            0 uses the refinement network alone; ``w > 0`` adds ``w`` times the global logits, sampled at the crop's
            pixels, to the refinement logits before decoding (a product of the two distributions: the global model
            knows where along a contour a landmark lies, the crop network where the contour is).
        pred_key: the global model's heatmap logits ``(N, h, w)`` (or a deep-supervision stack, finest first).
        context_factor: as the network was trained (:class:`LandmarkCropsd`): above 1, a second input channel cut
            from the image shrunk that many times, centred on the same point (a list: one channel per factor).
        shifts: test-time augmentation of the crop: ``[(dy, dx), ...]`` offsets in refinement-grid pixels; each
            pass also reads crops centred that far from the estimate and averages the positions they give with the
            unshifted crop's (empty: one crop per landmark). The spread comes from the unshifted crop.
        n_landmarks: the run's number of landmarks: with it a calibration for another number is refused here.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        crop_size: Sequence[int] = (96, 96),
        image_key: str = "image_fine",
        iterations: int = 1,
        precision: str = "none",
        device: str | torch.device = "cpu",
        calibration: Sequence | str = (1.0, 0.0),
        coarse_weight: float = 0.0,
        pred_key: str = "pred",
        context_factor: float | Sequence[float] = 0.0,
        shifts: Sequence[Sequence[float]] = (),
        n_landmarks: int | None = None,
    ):
        self.network, self.crop_size, self.image_key = network, tuple(int(s) for s in crop_size), image_key
        # the unshifted crop first: its heatmap gives the spread
        self.offsets = [torch.zeros(2)] + [torch.as_tensor(s, dtype=torch.float32).reshape(2) for s in (shifts or [])]
        self.coarse_weight, self.pred_key = float(coarse_weight), pred_key
        self.iterations = max(1, int(iterations))
        self.dtype, self.device = autocast_dtype(precision, device), torch.device(device)
        self.calibration = parse_calibration(calibration, n_landmarks)
        self.context_factors = context_factors(context_factor)

    @torch.no_grad()
    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if "pred_landmarks" not in d:
            return d  # nothing to refine (a file not read never gets here: bundle.transforms.UnlessErrord)
        image = torch.as_tensor(d[self.image_key]).float().to(self.device)
        scale = torch.as_tensor(d[self.image_key + "_scale"]).float().cpu()
        spacing = torch.as_tensor(d["spacing"]).float().cpu()
        coarse = torch.as_tensor(d["pred_landmarks"]).float().cpu()
        p = resized_from_original(coarse, scale)
        n = len(p)
        index = torch.arange(n, device=self.device)
        mid = torch.tensor([(self.crop_size[0] - 1) / 2, (self.crop_size[1] - 1) / 2])
        contexts = [context_image(image, f) for f in self.context_factors]
        self.network.eval()
        for _ in range(self.iterations):
            estimates = []
            for k, shift in enumerate(self.offsets):
                # whole-pixel centres: the crop is the image itself, not an interpolation
                centres = torch.round(p + shift)
                crops = [extract_crops(image, centres, self.crop_size)]
                for ctx, ctx_scale in contexts:
                    ctx_centres = resized_from_original(centres, ctx_scale.to(centres.device))
                    crops.append(extract_crops(ctx, ctx_centres, self.crop_size))
                crops = torch.cat(crops, 1)
                with torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None):
                    out = self.network(crops, index)
                out = out.float().cpu()[:, 0][None]  # (1, N, h, w)
                if self.coarse_weight:
                    out = out + self.coarse_weight * self._coarse_logits(d, centres, scale)[None]
                found, _ = heatmap_to_landmarks(out, refine="quadratic", log_scale=True)
                if k == 0:
                    logits, q = out, found
                estimates.append(found[0] + centres - mid)
            p = torch.stack(estimates).mean(0)
        spread_px = heatmap_spread(logits, q)[0]
        orig = original_from_resized(p, scale)
        d["coarse_landmarks"] = coarse
        d["pred_landmarks"] = orig
        d["pred_mm"] = orig * spacing
        pixel_mm = (spacing / scale).mean()
        d["spread_mm"] = spread_px * pixel_mm
        d["uncertainty_mm"] = expected_error_mm(d["spread_mm"], self.calibration, pixel_mm)
        return d

    def _coarse_logits(self, d: dict, centres: torch.Tensor, fine_scale: torch.Tensor) -> torch.Tensor:
        """The global model's logits of each landmark at the pixels of its crop, ``(N, h, w)`` (bilinear)."""
        coarse = torch.as_tensor(d[self.pred_key]).detach().float().cpu()
        if coarse.ndim == 4:
            coarse = coarse[0]
        fy, fx = crop_pixels(centres, self.crop_size)  # the refinement grid's pixels of every crop
        origin, cscale = heatmap_grid(d)
        # refinement grid -> original pixels -> the global model's grid
        cy = resized_from_original(original_from_resized(fy, fine_scale[0]) - origin[0], cscale[0])
        cx = resized_from_original(original_from_resized(fx, fine_scale[1]) - origin[1], cscale[1])
        return sample_at(coarse[:, None], cy, cx, padding_mode="border")[:, 0]
