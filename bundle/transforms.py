"""Landmark-aware dictionary transforms.

Each spatial transform moves the image and its landmarks together and records what it did, so predictions can be
mapped back to the original image. Data dictionaries carry (all tensors, MONAI array order):

- ``image``: ``(1, H, W)`` float32 in the current frame;
- ``landmarks``: ``(N, 2)`` ``(y, x)`` pixels in the current frame (absent at inference);
- ``landmarks_orig``: ``(N, 2)`` ``(y, x)`` pixels of the original file (absent at inference);
- ``spacing``: ``(2,)`` mm per original pixel (row, col);
- ``orig_size``: ``(2,)`` original ``(H, W)``;
- ``scale``: ``(2,)`` current pixels per original pixel, set by :class:`ResizeLandmarksd` (the only transform
  that inference inverts; random augmentations are training-only);
- ``image_name``, ``image_path``: the file's name and path;
- ``pixel_to_lps``: ``(3, 3)`` float64, where 3D Slicer shows each original pixel (``lps = M @ (x, y, 1)``, mm;
  :func:`bundle.io.read_image_geometry`);
- ``error``: set instead of raising when ``on_error="record"``.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import MapTransform, Randomizable, ScaleIntensityRange, Transform
from monai.transforms import ScaleIntensityRangePercentiles as _MonaiScaleIntensityRangePercentiles
from monai.transforms import ScaleIntensityRangePercentilesd as _MonaiScaleIntensityRangePercentilesd
from monai.utils import TransformBackends, convert_to_tensor

from .heatmaps import heatmap_spread, heatmap_to_landmarks, render_gaussian_heatmaps
from .io import (DICOM_SPACING_TAGS, PICTURE_GEOMETRY, CephDataError, is_dicom, item_image_name, read_image_geometry,
                 read_landmarks)
from .shape import load_shape_model, shape_z_scores

__all__ = [
    "LoadCephalogramd",
    "UnlessErrord",
    "CoarsePixelCheckd",
    "ResizeLandmarksd",
    "ScaleIntensityRangePercentiles",
    "ScaleIntensityRangePercentilesd",
    "RandAffineLandmarksd",
    "RandElasticLandmarksd",
    "LandmarksToHeatmapd",
    "HeatmapToLandmarksd",
    "parse_calibration",
    "expected_error_mm",
    "affine_warp",
    "similarity_matrix",
    "resize_image",
    "sample_at",
    "resized_from_original",
    "original_from_resized",
    "heatmap_grid",
    "mean_spread_mm",
]

logger = logging.getLogger(__name__)


def resized_from_original(points: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Map ``(..., 2)`` ``(y, x)`` original pixels into a grid resized by ``scale`` (the inverse of
    :func:`original_from_resized`)."""
    return (points + 0.5) * scale - 0.5


def original_from_resized(points: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Map ``(..., 2)`` ``(y, x)`` points of a resized grid back to original pixels (pixel centres aligned as in
    ``F.interpolate(align_corners=False)``: ``p_resized = (p_orig + 0.5) * scale - 0.5``)."""
    return (points + 0.5) / scale - 0.5


FIELD_MM = (100.0, 450.0)  # plausible extent (mm) of a cephalogram's longer side; outside it the spacing is suspect


class LoadCephalogramd(MapTransform):
    """Read the image at ``data["image"]`` and its landmarks from ``data["label_files"]`` (averaged when several
    files are listed, e.g. both doctors).

    Args:
        n_landmarks: number of landmarks expected in each file.
        spacing_mm: pixel spacing (mm) used when neither the file header nor ``data["spacing_mm"]`` gives one.
        dicom_spacing_mm: pixel spacing (mm) of a DICOM whose header gives none (a DICOM without
            ``PixelSpacing`` / ``ImagerPixelSpacing`` has lost its calibration, so neither ``spacing_mm`` nor the data
            list's spacing is assumed for it); None: such a file is an error that says how to give one.
        on_error: ``"raise"`` (training: a bad file stops the run with its name) or ``"record"`` (inference: the
            problem is stored in ``data["error"]``, the image replaced by a placeholder, and the batch goes on).
        error_size: ``(H, W)`` of the placeholder image (a ramp: a constant one makes MONAI's intensity scaling
            warn of a division by zero) put in place of an unreadable one.
    """

    def __init__(
        self,
        keys: KeysCollection = "image",
        label_key: str = "label_files",
        n_landmarks: int = 19,
        spacing_mm: float | None = 0.1,
        dicom_spacing_mm: float | None = None,
        on_error: str = "raise",
        error_size: Sequence[int] = (64, 64),
    ):
        super().__init__(keys)
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error should be 'raise' or 'record', got {on_error!r}.")
        if dicom_spacing_mm is not None and not float(dicom_spacing_mm) > 0:
            raise ValueError(f"dicom_spacing_mm should be a positive number of mm or None, got {dicom_spacing_mm!r}.")
        self.label_key = label_key
        self.n_landmarks = n_landmarks
        self.spacing_mm = spacing_mm
        self.dicom_spacing_mm = dicom_spacing_mm
        self.on_error = on_error
        self.error_size = tuple(error_size)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        key = self.keys[0]
        path = str(d[key])
        d["image_name"] = item_image_name(d)  # the data list's (a path in a subfolder) or the file's
        d["image_path"] = path
        try:
            self._load(d, key, path)
        except (CephDataError, FileNotFoundError) as e:
            if self.on_error == "raise":
                raise
            logger.warning("skipping %s", e)
            d["error"] = str(e)
            d[key] = torch.linspace(0.0, 1.0, math.prod(self.error_size)).reshape(1, *self.error_size)
            d["spacing"] = torch.full((2,), float(self.spacing_mm or 1.0))
            d["orig_size"] = torch.tensor(self.error_size, dtype=torch.float32)
            d["scale"] = torch.ones(2)
            d["pixel_to_lps"] = torch.as_tensor(PICTURE_GEOMETRY)
            d.pop("landmarks", None)
            d.pop("landmarks_orig", None)
        else:
            d["error"] = ""
        return d

    def _load(self, d: dict, key: str, path: str) -> None:
        image, header_spacing, geometry = read_image_geometry(path)
        h, w = image.shape
        if header_spacing is not None:
            spacing, source = header_spacing, "from the file"
        elif is_dicom(path):
            if self.dicom_spacing_mm is None:
                raise CephDataError(
                    path, f"DICOM has no pixel spacing ({', '.join(DICOM_SPACING_TAGS)}); if you know it, give it with "
                    "--dicom_spacing_mm MM (mm per pixel of such DICOMs)"
                )
            spacing, source = (float(self.dicom_spacing_mm),) * 2, "dicom_spacing_mm of the config"
        elif d.get("spacing_mm") is not None:
            spacing, source = (float(d["spacing_mm"]),) * 2, "from the data list"
        elif self.spacing_mm is not None:
            spacing, source = (float(self.spacing_mm),) * 2, "pixel_spacing_mm of the config"
        else:
            raise CephDataError(path, "no pixel spacing in the file and none configured (pixel_spacing_mm)")
        extent = max(h * spacing[0], w * spacing[1])
        if not FIELD_MM[0] <= extent <= FIELD_MM[1]:
            logger.warning(
                "%s: %dx%d pixels at %.4g mm (%s) span %.0f x %.0f mm, outside the %.0f-%.0f mm of a lateral cephalogram; "
                "check the pixel spacing (set pixel_spacing_mm): millimetre results and the refinement crops use it",
                path, w, h, spacing[1], source, w * spacing[1], h * spacing[0], *FIELD_MM,
            )
        files = d.get(self.label_key)
        if files:
            pts = [read_landmarks(f, self.n_landmarks, image_name=Path(path).name, pixel_to_lps=geometry) for f in files]
            for f, p in zip(files, pts):
                outside = np.where((p[:, 0] < -0.5) | (p[:, 0] > h - 0.5) | (p[:, 1] < -0.5) | (p[:, 1] > w - 0.5))[0]
                if outside.size:
                    i = int(outside[0])
                    raise CephDataError(
                        f, f"landmark {i + 1} at x={p[i, 1]:.1f}, y={p[i, 0]:.1f} lies outside the {w}x{h} image {path}"
                    )
            lm = torch.as_tensor(np.mean(pts, axis=0), dtype=torch.float32)
            d["landmarks"] = lm
            d["landmarks_orig"] = lm.clone()
        d[key] = torch.as_tensor(image)[None]
        d["spacing"] = torch.tensor(spacing, dtype=torch.float32)
        d["pixel_to_lps"] = torch.as_tensor(geometry)  # where Slicer shows each pixel: the Slicer point lists use it
        d["orig_size"] = torch.tensor((h, w), dtype=torch.float32)
        d["scale"] = torch.ones(2)


class UnlessErrord(Transform):
    """Apply ``transforms`` in order to an item unless its file was not read: :class:`LoadCephalogramd` with
    ``on_error="record"`` puts the problem in ``data["error"]`` and a placeholder image in place of the file, and such
    an item goes on unchanged (to ``errors.csv``). The post-processing after the decoding (other readings, the
    refinement, the bias correction, the orientation restored) is wrapped in one, so none of those transforms reads a
    placeholder, and none of them needs a check of its own.

    Args:
        transforms: the transforms (a list, or a single one), applied as MONAI's ``Compose`` applies them.
        error_key: the item's entry that holds the loader's error message (empty or absent: the file was read).
    """

    def __init__(self, transforms, error_key: str = "error"):
        from monai.transforms import Compose

        self.transforms = Compose(transforms)
        self.error_key = error_key

    def __call__(self, data: Mapping[Hashable, object]):
        if data.get(self.error_key):
            return data
        return self.transforms(data)


class CoarsePixelCheckd(Transform):
    """Ask for a check (the item's ``checks``: ``checks.csv`` and ``report.html``) of an image whose pixels are coarser
    than ``max_mm``: its landmarks are then less accurate than their expected errors (``uncertainty_mm``) say. Measured
    with ``scripts/probe_resolution.py`` (ISBI images shrunk, their spacing given; docs/README.md, "Images unlike
    ISBI's"): on 10 Train images the MRE is 0.96 mm at 0.1 mm pixels, 1.07 at 0.8, 1.31 at 1.2, 1.74 at 2.4 and 3.17 at
    3.2, while the mean expected error grows only from 1.30 to 1.70 mm.

    Args:
        max_mm: the coarsest pixel (mm, either axis) not checked; None or 0: no check.
        name_key: the item's entry that names the image in the warning.
    """

    def __init__(self, max_mm: float | None = 1.0, name_key: str = "image_name"):
        self.max_mm = float(max_mm) if max_mm else None
        self.name_key = name_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        if self.max_mm is None or "spacing" not in d:
            return d
        spacing = torch.as_tensor(d["spacing"]).float().cpu().flatten()
        if not float(spacing.max()) > self.max_mm:
            return d
        size = ""
        if "orig_size" in d:
            h, w = (int(v) for v in torch.as_tensor(d["orig_size"]).flatten().tolist()[:2])
            size = f" ({w} x {h} pixels)"
        check = (f"its pixels are {float(spacing[0]):.3g} x {float(spacing[1]):.3g} mm{size}, coarser than {self.max_mm:g} "
                 "mm: its landmarks are less accurate than their expected errors say (10 ISBI training images shrunk to "
                 "2.4 mm pixels: 1.7 mm off on average, to 3.2 mm pixels: 3.2 mm, against 1.0 mm unshrunk)")
        logger.warning("%s: %s", d.get(self.name_key, "image"), check)
        d["checks"] = [*d.get("checks", []), check]
        return d


class ResizeLandmarksd(MapTransform):
    """Resample the image to ``spatial_size`` with an anti-aliased bilinear filter and scale the landmarks with it.

    Args:
        spatial_size: output ``(H, W)`` in pixels.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, keys: KeysCollection = "image", spatial_size: Sequence[int] = (512, 416)):
        super().__init__(keys)
        if len(spatial_size) != 2 or min(spatial_size) < 8:
            raise ValueError(f"spatial_size should be (H, W) of at least 8 pixels, got {spatial_size}.")
        self.spatial_size = (int(spatial_size[0]), int(spatial_size[1]))

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[self.keys[0]], factor = resize_image(d[self.keys[0]], self.spatial_size)
        if "landmarks" in d:
            d["landmarks"] = resized_from_original(d["landmarks"], factor)
        d["scale"] = d.get("scale", torch.ones(2)) * factor
        return d


def resize_image(image: torch.Tensor, spatial_size: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Anti-aliased bilinear resampling of a ``(C, H, W)`` image to ``spatial_size``; returns the image and the
    ``(2,)`` factor (new pixels per old pixel) that :func:`resized_from_original` maps points with."""
    img = torch.as_tensor(image, dtype=torch.float32)
    size = [int(spatial_size[0]), int(spatial_size[1])]
    out = F.interpolate(img[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return out, torch.tensor(size, dtype=torch.float32) / torch.tensor(img.shape[-2:], dtype=torch.float32)


class ScaleIntensityRangePercentiles(_MonaiScaleIntensityRangePercentiles):
    """MONAI's :class:`~monai.transforms.ScaleIntensityRangePercentiles` (same arguments, same result), with both
    percentiles taken in one ``numpy.percentile`` call, a linear-time selection, whatever the image's size.

    MONAI's ``percentile`` selects with numpy only above 1M elements and sorts smaller tensors with
    ``torch.quantile``, twice: for the 800 x 640 global input that made the shipped pipeline take 1.25 s per ISBI
    image on 2 AVX-512 BF16 cores against 1.15 s with this transform, in the same run
    (docs/results/benchmark_inference_linear_percentiles_avx512bf16.json). Both interpolate linearly between the two
    nearest values, so the scaled images differ by float rounding only (in fp32 no landmark of the 150 Train images
    moved). ``channel_wise`` is MONAI's, per channel.
    """

    def _normalize(self, img):
        a_min, a_max = (float(v) for v in np.percentile(convert_to_tensor(img, track_meta=False).detach().cpu()
                                                       .numpy(), [self.lower, self.upper]))
        b_min, b_max = self.b_min, self.b_max
        if self.relative:
            if (self.b_min is None) or (self.b_max is None):
                raise ValueError("If it is relative, b_min and b_max should not be None.")
            b_min = ((self.b_max - self.b_min) * (self.lower / 100.0)) + self.b_min
            b_max = ((self.b_max - self.b_min) * (self.upper / 100.0)) + self.b_min
        img = ScaleIntensityRange(a_min=a_min, a_max=a_max, b_min=b_min, b_max=b_max, clip=self.clip,
                                  dtype=self.dtype)(img)
        return convert_to_tensor(img, track_meta=False)


class ScaleIntensityRangePercentilesd(_MonaiScaleIntensityRangePercentilesd):
    """Dictionary form of :class:`ScaleIntensityRangePercentiles` (MONAI's ``ScaleIntensityRangePercentilesd``,
    same arguments): every config scales intensities with it, training and inference alike."""

    def __init__(self, keys: KeysCollection, lower: float, upper: float, b_min: float | None, b_max: float | None,
                 clip: bool = False, relative: bool = False, channel_wise: bool = False, dtype=np.float32,
                 allow_missing_keys: bool = False) -> None:
        super().__init__(keys, lower, upper, b_min, b_max, clip, relative, channel_wise, dtype, allow_missing_keys)
        self.scaler = ScaleIntensityRangePercentiles(lower, upper, b_min, b_max, clip, relative, channel_wise, dtype)


def similarity_matrix(centre_in: torch.Tensor, centre_out: torch.Tensor, angle: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """3x3 ``out_from_in`` matrix (homogeneous ``(y, x, 1)``, float64) that rotates by ``angle`` radians and scales
    by ``scale`` about ``centre_in`` and puts that point at ``centre_out``."""
    c, s = math.cos(angle), math.sin(angle)
    lin = torch.tensor([[c, -s], [s, c]], dtype=torch.float64) * scale
    m = torch.eye(3, dtype=torch.float64)
    m[:2, :2] = lin
    m[:2, 2] = torch.as_tensor(centre_out, dtype=torch.float64) - lin @ torch.as_tensor(centre_in, dtype=torch.float64)
    return m


def affine_warp(image: torch.Tensor, out_from_in: torch.Tensor, out_size: Sequence[int]) -> torch.Tensor:
    """Warp a ``(C, H, W)`` image with a 3x3 matrix that maps homogeneous ``(y, x, 1)`` input pixels to output
    pixels (bilinear, zeros outside)."""
    h, w = int(out_size[0]), int(out_size[1])
    in_from_out = torch.linalg.inv(out_from_in.to(torch.float64)).to(device=image.device, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32, device=image.device),
                            torch.arange(w, dtype=torch.float32, device=image.device), indexing="ij")
    pts = torch.stack([ys, xs, torch.ones_like(ys)], -1) @ in_from_out.T  # (h, w, 3) input (y, x, 1)
    return _sample(image, pts[..., 0], pts[..., 1])


def _sample(image: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of ``(C, H, W)`` at pixel coordinates ``y``, ``x`` (arrays of the output shape)."""
    return sample_at(image[None], y[None], x[None])[0]


def sample_at(images: torch.Tensor, y: torch.Tensor, x: torch.Tensor, padding_mode: str = "zeros") -> torch.Tensor:
    """Bilinear samples ``(B, C, h, w)`` of ``(B, C, H, W)`` images at pixel coordinates ``y``, ``x`` ``(B, h, w)``
    (the centre of the first pixel at 0, as everywhere in the bundle)."""
    hi, wi = images.shape[-2:]
    grid = torch.stack([(2 * x + 1) / wi - 1, (2 * y + 1) / hi - 1], -1)  # align_corners=False convention
    return F.grid_sample(images.float(), grid.float(), mode="bilinear", padding_mode=padding_mode, align_corners=False)


class RandAffineLandmarksd(Randomizable, MapTransform):
    """Random rotation, scaling and translation about the image centre, applied to image and landmarks alike.

    Args:
        prob: probability of applying the transform.
        rotate_range: maximum rotation in radians (uniform in ``[-r, r]``).
        scale_range: maximum relative scale change (uniform in ``[1 - s, 1 + s]``).
        translate_range: maximum translation as a fraction of each image side.
    """

    backend = [TransformBackends.TORCH]

    def __init__(
        self,
        keys: KeysCollection = "image",
        prob: float = 0.9,
        rotate_range: float = math.radians(10),
        scale_range: float = 0.1,
        translate_range: float = 0.05,
    ):
        MapTransform.__init__(self, keys)
        self.prob, self.rotate_range, self.scale_range, self.translate_range = prob, rotate_range, scale_range, translate_range
        self._params: tuple[float, float, float, float] | None = None

    def randomize(self, data=None) -> None:
        if self.R.rand() >= self.prob:
            self._params = None
            return
        self._params = (
            self.R.uniform(-self.rotate_range, self.rotate_range),
            self.R.uniform(1 - self.scale_range, 1 + self.scale_range),
            self.R.uniform(-self.translate_range, self.translate_range),
            self.R.uniform(-self.translate_range, self.translate_range),
        )

    def matrix(self, size: Sequence[int]) -> torch.Tensor:
        """The 3x3 ``out_from_in`` matrix of the drawn parameters for an image of ``size`` ``(H, W)``."""
        if self._params is None:
            return torch.eye(3)
        angle, s, ty, tx = self._params
        h, w = size
        centre = torch.tensor([(h - 1) / 2, (w - 1) / 2], dtype=torch.float64)
        return similarity_matrix(centre, centre + torch.tensor([ty * h, tx * w], dtype=torch.float64), angle, s).float()

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if self._params is None:
            return d
        size = d[self.keys[0]].shape[-2:]
        m = self.matrix(size)
        for key in self.key_iterator(d):
            d[key] = affine_warp(torch.as_tensor(d[key]), m, size)
        if "landmarks" in d:
            pts = torch.cat([d["landmarks"], torch.ones(len(d["landmarks"]), 1)], 1)
            d["landmarks"] = (pts @ m.T)[:, :2]
        return d


class RandElasticLandmarksd(Randomizable, MapTransform):
    """Random smooth elastic deformation; landmarks follow it exactly.

    The image is resampled as ``out(p) = in(p + u(p))`` with a displacement field ``u`` interpolated (bicubic) from
    a coarse grid of Gaussian control displacements. A landmark at ``q`` of the input lands at the ``p`` that solves
    ``p + u(p) = q``, found by fixed-point iteration ``p <- q - u(p)`` (it converges because ``|grad u| << 1``).

    Args:
        prob: probability of applying it.
        magnitude: standard deviation of the control displacements in pixels.
        grid: number of control points ``(rows, cols)``.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, keys: KeysCollection = "image", prob: float = 0.3, magnitude: float = 3.0, grid: Sequence[int] = (5, 4)):
        MapTransform.__init__(self, keys)
        self.prob, self.magnitude, self.grid = prob, magnitude, tuple(grid)
        self._control: np.ndarray | None = None

    def randomize(self, data=None) -> None:
        self._control = self.R.normal(0, self.magnitude, (2, *self.grid)) if self.R.rand() < self.prob else None

    def field(self, size: Sequence[int]) -> torch.Tensor:
        """The ``(2, H, W)`` displacement ``(uy, ux)`` in pixels of the drawn control points."""
        ctrl = torch.as_tensor(self._control, dtype=torch.float32)[None]
        return F.interpolate(ctrl, size=tuple(int(s) for s in size), mode="bicubic", align_corners=True)[0]

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        self.randomize()
        if self._control is None:
            return d
        size = d[self.keys[0]].shape[-2:]
        u = self.field(size)
        ys, xs = torch.meshgrid(torch.arange(size[0], dtype=torch.float32), torch.arange(size[1], dtype=torch.float32), indexing="ij")
        for key in self.key_iterator(d):
            d[key] = _sample(torch.as_tensor(d[key]), ys + u[0], xs + u[1])
        if "landmarks" in d:
            q = d["landmarks"]
            p = q.clone()
            for _ in range(20):
                disp = _sample(u, p[:, 0:1], p[:, 1:2])[:, :, 0].T  # (N, 2) displacement at p
                p = q - disp
            d["landmarks"] = p
        return d


class LandmarksToHeatmapd(Transform):
    """Render ``data["landmarks"]`` as Gaussian heatmaps ``data[label_key]`` ``(N, H, W)`` on the grid of
    ``data[ref_key]`` (peak 1, sub-pixel centres).

    Args:
        sigma: standard deviation in pixels of that grid.
    """

    backend = [TransformBackends.TORCH]

    def __init__(self, sigma: float = 2.0, label_key: str = "label", ref_key: str = "image"):
        if sigma <= 0:
            raise ValueError(f"sigma should be positive, got {sigma}.")
        self.sigma, self.label_key, self.ref_key = sigma, label_key, ref_key

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        d[self.label_key] = render_gaussian_heatmaps(d["landmarks"], d[self.ref_key].shape[-2:], self.sigma)
        return d


def parse_calibration(calibration: Sequence | str | Path, n_landmarks: int | None = None) -> tuple[float, torch.Tensor]:
    """``(a, b)`` of the spread-to-error line as ``(float, tensor)``; ``b`` one number or one per landmark.

    ``calibration`` is ``[a, b]`` or the path of a ``calibration.json`` that an evaluation wrote. With
    ``n_landmarks``, per-landmark intercepts for another number of landmarks are refused."""
    if isinstance(calibration, (str, Path)):
        path = Path(calibration)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: calibration file not found (an evaluation writes calibration.json).")
        try:
            calibration = json.loads(path.read_text())["uncertainty_calibration"]
        except (ValueError, KeyError) as e:
            raise ValueError(f"{path}: not a calibration.json with 'uncertainty_calibration' [a, b] ({e}).") from e
    a, b = float(calibration[0]), torch.as_tensor(calibration[1], dtype=torch.float32)
    if n_landmarks is not None and b.numel() not in (1, int(n_landmarks)):
        raise ValueError(
            f"the uncertainty calibration has {b.numel()} per-landmark intercepts for {int(n_landmarks)} landmarks: pass "
            "the calibration.json that evaluating these weights wrote (e.g. --uncertainty_calibration "
            "EVAL_DIR/calibration.json) or one intercept for all ('[1.0, 0.0]')."
        )
    return a, b


def expected_error_mm(spread_mm: torch.Tensor, calibration: tuple[float, torch.Tensor], pixel_mm: torch.Tensor) -> torch.Tensor:
    """The calibrated expected radial error ``a * spread_mm + b``, floored at ``pixel_mm``: a linear fit can dip below
    zero, and no decoding is surer than one pixel of its own grid."""
    return torch.maximum(calibration[0] * spread_mm + calibration[1], pixel_mm)


def mean_spread_mm(d: Mapping) -> float:
    """The mean over the landmarks of a decoded item's heatmap spread (``spread_mm``, :class:`HeatmapToLandmarksd`):
    how sure the global pass is of the reading as a whole."""
    return float(torch.as_tensor(d["spread_mm"]).float().mean())


def heatmap_grid(d: Mapping) -> tuple[torch.Tensor, torch.Tensor]:
    """``(origin, scale)`` ``(2,)`` each of the global heatmap's grid in an item: original pixel ``p`` is heatmap
    pixel ``resized_from_original(p - origin, scale)``. The network input's (``scale``, origin 0) unless
    :class:`~bundle.framing.ReframeImaged` read another frame (``pred_frame``)."""
    if "pred_frame" in d:
        frame = torch.as_tensor(d["pred_frame"]).float().cpu()
        return frame[0], frame[1]
    return torch.zeros(2), torch.as_tensor(d["scale"]).float().cpu()


class HeatmapToLandmarksd(Transform):
    """Decode predicted heatmap logits ``data["pred"]`` ``(N, h, w)`` into landmarks of the original image.

    Writes ``pred_landmarks`` ``(N, 2)`` ``(y, x)`` original pixels, ``pred_mm`` (the same in mm), ``spread_mm``
    ``(N,)`` (the RMS distance of the softmax mass from the decoded point), ``uncertainty_mm`` ``(N,)`` (the
    expected radial error ``calibration[0] * spread_mm + calibration[1]``, where ``calibration[1]`` is one number
    or one per landmark; evaluation fits it and writes ``calibration.json``), and ``true_mm`` when the item has
    ``landmarks_orig``.

    Args:
        refine: sub-pixel refinement, see :func:`heatmap_to_landmarks`.
        calibration: ``(a, b)`` of the linear map from heatmap spread to expected error, fitted on validation data;
            ``b`` is a number or a list with one intercept per landmark; or the path of an evaluation's
            ``calibration.json``.
        shape_model: a shape model (:mod:`bundle.shape`; a JSON path or dict) or None. With one, a landmark whose
            shape z-score exceeds ``shape_z_max`` is decoded again from its heatmap inside a disk of
            ``shape_radius_sd`` of its shape SD around where the other landmarks place it; ``shape_z`` ``(N,)`` and
            ``shape_corrected`` ``(N,)`` are written. The spread stays that of the whole heatmap, so a corrected
            landmark keeps a large uncertainty.
        landmark_names: the run's landmarks, in order: with them a calibration or shape model made for other
            landmarks is refused when the transform is built, not on every image.
    """

    def __init__(
        self,
        pred_key: str = "pred",
        refine: str = "quadratic",
        calibration: Sequence = (1.0, 0.0),
        shape_model=None,
        shape_z_max: float = 4.0,
        shape_radius_sd: float = 3.0,
        landmark_names: Sequence[str] | None = None,
    ):
        self.pred_key, self.refine = pred_key, refine
        n = None if landmark_names is None else len(landmark_names)
        self.calibration = parse_calibration(calibration, n)
        self.shape_model = load_shape_model(shape_model, landmark_names)
        self.shape_z_max, self.shape_radius_sd = float(shape_z_max), float(shape_radius_sd)

    def __call__(self, data: Mapping[Hashable, object]) -> dict:
        d = dict(data)
        logits = torch.as_tensor(d[self.pred_key]).detach().float().cpu()
        if logits.ndim == 4:  # deep-supervision stack (S, N, h, w): the finest head is first
            logits = logits[0]
        pts, _ = heatmap_to_landmarks(logits[None], refine=self.refine, log_scale=True)
        pts = pts[0]
        origin, scale = heatmap_grid(d)
        spacing = torch.as_tensor(d["spacing"]).float().cpu()
        pixel_mm = (spacing / scale).mean()
        if self.shape_model is not None:
            pts = self._shape_check(logits, pts, scale, origin, spacing, pixel_mm, d)
        # the spread of the whole heatmap around the final point (a corrected landmark stays uncertain)
        spread_px = heatmap_spread(logits[None], pts[None])[0]
        orig = original_from_resized(pts, scale) + origin
        d["pred_landmarks"] = orig
        d["pred_mm"] = orig * spacing
        d["spread_mm"] = spread_px * pixel_mm
        d["uncertainty_mm"] = expected_error_mm(d["spread_mm"], self.calibration, pixel_mm)
        if "landmarks_orig" in d:
            d["true_mm"] = torch.as_tensor(d["landmarks_orig"]).float().cpu() * spacing
        return d

    def _shape_check(self, logits, pts, scale, origin, spacing, pixel_mm, d):
        """``pts`` (heatmap pixels) with the shape outliers decoded again inside their disks."""
        expected_mm, z = shape_z_scores(((original_from_resized(pts, scale) + origin) * spacing).numpy(), self.shape_model)
        outliers = torch.as_tensor(z > self.shape_z_max)
        d["shape_z"] = torch.as_tensor(z, dtype=torch.float32)
        d["shape_corrected"] = outliers
        if outliers.any():
            h, w = logits.shape[-2:]
            yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
            centres = resized_from_original(torch.as_tensor(expected_mm, dtype=torch.float32) / spacing - origin, scale)
            sd_px = torch.as_tensor(self.shape_model["sd_mm"], dtype=torch.float32) / pixel_mm
            masked = logits.clone()
            for k in torch.nonzero(outliers).flatten().tolist():
                far = (yy - centres[k, 0]) ** 2 + (xx - centres[k, 1]) ** 2 > (self.shape_radius_sd * sd_px[k]) ** 2
                masked[k][far] = logits[k].min() - 1e4  # only the disk can hold the peak
            again, _ = heatmap_to_landmarks(masked[None], refine=self.refine, log_scale=True)
            pts = torch.where(outliers[:, None], again[0], pts)
        return pts
