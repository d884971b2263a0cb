"""Deterministic synthetic lateral cephalograms in the ISBI 2015 folder layout.

The generator exists so that the whole pipeline (loading, transforms, training, inference, evaluation) can be
exercised without the real ISBI 2015 images. It is *not* a model of real radiographs; it only has to be
anatomically consistent enough that every one of the 19 ISBI landmarks sits on a visible structure which a
CNN can learn to find, with a realistic spread of positions.

Model
-----
1. **Shape.** All geometry is done in millimetres of the real ISBI field of view (240 mm high, 193.5 mm wide,
   x to the right, y down; the face looks to the right). The starting point is :data:`ISBI_MEAN_XY`, the mean
   landmark positions of the 150 real training images (mean of both doctors). Variation is coherent, not
   independent per point:

   * smooth shape modes: lower facial height, mandibular rotation about the condyle (opening), mandibular
     length (prognathism), maxillary antero-posterior position, incisor protrusion / overjet, lip and chin
     soft-tissue thickness, anterior cranial base inclination;
   * a random similarity transform of the whole head about the ear rods (mean Porion): rotation
     (SD 3.5 deg, clipped to +-6 deg), scale (SD 4.5 %, clipped to +-8 %), translation (SD 3.5 mm, clipped to
     +-4 % of the field);
   * small per-point jitter (1.1 mm SD).

   The amplitudes were fitted (bounded least squares on the per-landmark variances) so that the per-landmark
   standard deviations are close to :data:`ISBI_SD_XY`: over many cases they come out at 0.82-1.09 times the
   real ones (the real spread is smallest at Porion / Articulare, the ear rods, and largest at the chin).
2. **Anatomy.** The skull is drawn *from the landmark positions*: every contour is a Catmull-Rom spline
   whose control points are either landmarks (so the landmark lies exactly on the contour) or auxiliary
   points defined on the mean shape and carried along by a per-part similarity fit plus inverse-distance
   interpolation of the landmark residuals (cranium, maxilla, mandible, soft tissue). Drawn structures and the
   landmark each one carries:

   * cranial vault (bright ring), frontal bone and nasal bones with the frontonasal notch -> *Nasion*;
   * sphenoid / clivus block with the sella turcica carved in as a dark round pit with a bright floor ->
     *Sella* at the pit centre; the inferior contour of the basiocciput passes through *Articulare*, which is
     also on the posterior border of the ramus;
   * orbit rim (ellipse ring) -> *Orbitale* at its lowest point;
   * ear rod: bright ring around the dark ear canal -> *Porion* at the top of the canal;
   * maxilla with the palate bar tapering to *PNS* and *ANS*; *A point* is the deepest point of the anterior
     maxillary concavity;
   * mandible (filled body, cortical outline, symphysis): *Gonion* at the angle, *B point* in the anterior
     concavity, *Pogonion*, *Gnathion*, *Menton* on the symphysis contour;
   * tapered incisors whose tips are the *upper / lower incisal incision*; other teeth as distractors;
   * soft-tissue silhouette through *Subnasale*, *Upper lip*, *Lower lip*, *Soft tissue pogonion*;
   * distractors: cervical vertebrae, airway, sinuses, hyoid.
3. **Radiograph look.** Structures are rasterised with Pillow on a supersampled canvas into an additive
   attenuation map (bone with a low-frequency texture), box-downsampled, blurred, passed through
   ``1 - exp(-k * attenuation)``, then given a low-frequency background gradient, random gamma / contrast /
   brightness, a vignette and Poisson-like + Gaussian noise.

All randomness comes from a seeded :class:`numpy.random.Generator`; case ``i`` of a data set uses the
``i``-th child of ``numpy.random.SeedSequence(seed)``, so a case does not depend on how many others are made,
and the same seed gives byte-identical files (with the same numpy / Pillow versions).

Files (the ISBI 2015 layout, read by the project's ISBI loader)::

    OUT/RawImage/TrainingData/001.jpg ...       n_train images
    OUT/RawImage/Test1Data/NNN.jpg ...          n_test images, numbered on after the training ones
    OUT/AnnotationsByMD/400_senior/NNN.txt      19 lines "x,y", integer pixels of the full image
    OUT/AnnotationsByMD/400_junior/NNN.txt      same points + independent N(0, 1 mm) noise per axis
    OUT/dataset.json                            parameters, written last

The senior file holds the drawn (ground-truth) positions rounded to integers; the junior file imitates a
second annotator. Pixel coordinates follow the project convention: x right, y down, the centre of the first
pixel at (0, 0). Pixels are square with ``pixel_spacing_mm = 240 / H``.

Command line::

    python -m bundle.synthetic --out DIR [--n-train N] [--n-test N] [--seed S] [--size H W]
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

__all__ = [
    "ISBI_MEAN_XY",
    "ISBI_SD_XY",
    "REAL_IMAGE_SIZE_HW",
    "REAL_PIXEL_SPACING_MM",
    "FIELD_SIZE_MM_HW",
    "DEFAULT_IMAGE_SIZE_HW",
    "GENERATOR_NAME",
    "GENERATOR_VERSION",
    "JUNIOR_NOISE_SD_MM",
    "pixel_spacing_for_size",
    "synthesize_cephalogram",
    "generate_synthetic_dataset",
    "main",
]

#: Mean landmark positions ``(x, y)`` in pixels of the real 1935 x 2400 (W x H) ISBI images at 0.1 mm,
#: mean of both doctors over the 150 real training images, in ISBI landmark order (see
#: ``bundle.ISBI_LANDMARK_NAMES``). Shape (19, 2).
ISBI_MEAN_XY: np.ndarray = np.array(
    [
        [806.6, 1038.4], [1389.7, 969.0], [1278.4, 1219.2], [600.3, 1211.7], [1383.6, 1512.6],
        [1357.0, 1851.3], [1351.7, 1980.3], [1291.7, 2040.7], [1333.5, 2021.0], [733.3, 1735.3],
        [1420.4, 1689.5], [1436.6, 1701.3], [1555.8, 1609.4], [1532.8, 1810.4], [1496.9, 1489.8],
        [1445.2, 2011.8], [973.7, 1428.3], [1401.0, 1444.9], [670.3, 1327.3],
    ]
)
ISBI_MEAN_XY.setflags(write=False)

#: Per-axis standard deviation ``(sd_x, sd_y)`` of the real landmark positions, pixels at 0.1 mm. Shape (19, 2).
ISBI_SD_XY: np.ndarray = np.array(
    [
        [44.9, 47.7], [61.1, 70.0], [47.4, 63.4], [33.9, 39.7], [65.1, 69.5], [85.0, 80.7], [97.1, 88.4],
        [97.0, 90.0], [98.2, 89.7], [60.0, 68.4], [74.8, 78.0], [75.8, 75.6], [69.2, 82.7], [82.9, 84.0],
        [66.1, 78.9], [96.8, 89.1], [46.2, 52.7], [61.0, 74.7], [37.5, 40.6],
    ]
)
ISBI_SD_XY.setflags(write=False)

#: Size (H, W) in pixels of the real ISBI 2015 images.
REAL_IMAGE_SIZE_HW: Tuple[int, int] = (2400, 1935)
#: Pixel spacing of the real ISBI 2015 images in mm.
REAL_PIXEL_SPACING_MM: float = 0.1
#: Field of view (height, width) in mm covered by every (real or synthetic) image.
FIELD_SIZE_MM_HW: Tuple[float, float] = (240.0, 193.5)
#: Default synthetic image size (H, W): 0.5 mm pixels.
DEFAULT_IMAGE_SIZE_HW: Tuple[int, int] = (480, 387)
#: Value of ``"generator"`` in ``dataset.json``.
GENERATOR_NAME: str = "bundle.synthetic"
#: Value of ``"version"`` in ``dataset.json``; bump when the images change for a given seed.
GENERATOR_VERSION: int = 1
#: Standard deviation (mm, per axis) of the "junior doctor" annotation noise.
JUNIOR_NOISE_SD_MM: float = 1.0

_N_LANDMARKS = 19
(S, N, OR, PO, A, B, POG, ME, GN, GO, LIT, UIT, UL, LL, SN, SPOG, PNS, ANS, AR) = range(_N_LANDMARKS)
_NAME_TO_INDEX: Dict[str, int] = {
    "S": S, "N": N, "Or": OR, "Po": PO, "A": A, "B": B, "Pog": POG, "Me": ME, "Gn": GN, "Go": GO,
    "LIT": LIT, "UIT": UIT, "UL": UL, "LL": LL, "Sn": SN, "sPog": SPOG, "PNS": PNS, "ANS": ANS, "Ar": AR,
}

_MIN_SIZE = 64
_MAX_SIZE = 4800
_ASPECT_TOL = 0.05
_MARGIN_MM = 8.0  # landmarks keep at least this distance from the image border
_JPEG_QUALITY = 95


def _real_px_to_mm(xy: np.ndarray) -> np.ndarray:
    """Real ISBI pixel coordinates (pixel centres at integers) -> mm from the top-left image corner."""
    return (np.asarray(xy, dtype=np.float64) + 0.5) * REAL_PIXEL_SPACING_MM


_MEAN_MM = _real_px_to_mm(ISBI_MEAN_XY)
_SD_MM = ISBI_SD_XY * REAL_PIXEL_SPACING_MM


# ----------------------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------------------


def _check_size(image_size_hw: Sequence[int]) -> Tuple[int, int]:
    """Validate an (H, W) image size and return it as a tuple of ints."""
    try:
        h, w = (int(v) for v in image_size_hw)
    except (TypeError, ValueError) as err:
        raise ValueError(f"image_size_hw must be two integers (H, W), got {image_size_hw!r}") from err
    if tuple(float(v) for v in image_size_hw) != (float(h), float(w)):
        raise ValueError(f"image_size_hw must be integers, got {image_size_hw!r}")
    if not (_MIN_SIZE <= h <= _MAX_SIZE and _MIN_SIZE <= w <= _MAX_SIZE):
        raise ValueError(f"image_size_hw must lie in [{_MIN_SIZE}, {_MAX_SIZE}] per axis, got {(h, w)}")
    want = FIELD_SIZE_MM_HW[1] / FIELD_SIZE_MM_HW[0]
    if abs((w / h) / want - 1.0) > _ASPECT_TOL:
        raise ValueError(
            f"image_size_hw {(h, w)} has aspect W/H = {w / h:.3f}; it must be within {_ASPECT_TOL:.0%} of the "
            f"ISBI aspect {want:.4f} (e.g. (480, 387), (800, 645), (2400, 1935))"
        )
    return h, w


def pixel_spacing_for_size(image_size_hw: Sequence[int]) -> float:
    """Square pixel spacing of a synthetic image of the given size.

    Args:
        image_size_hw: (H, W) in pixels.

    Returns:
        Spacing in mm per pixel, ``240 / H`` (the field of view is 240 mm high like the real images).

    Raises:
        ValueError: if the size is not two integers in range with the ISBI aspect ratio (+-5 %).
    """
    h, _ = _check_size(image_size_hw)
    return FIELD_SIZE_MM_HW[0] / h


# ----------------------------------------------------------------------------------------------------------
# Shape model
# ----------------------------------------------------------------------------------------------------------

_MAND = np.array([B, POG, ME, GN, GO, LIT, LL, SPOG])
_MAXI = np.array([A, ANS, UIT, SN, UL])

# Standard deviations of the shape model (mm unless stated). Calibrated with a non-negative least-squares fit
# of the per-landmark variances to ISBI_SD_XY (each component's variance contribution measured separately).
_SHAPE_SD: Dict[str, float] = {
    "head_rot_deg": 3.5,  # rotation of the whole head about the ear rods (Porion); clipped to +-6 deg
    "head_scale": 0.045,  # relative size; clipped to +-8 %
    "head_shift_x": 3.5,  # translation; clipped to +-4 % of the field
    "head_shift_y": 3.5,
    "face_height": 5.3,  # lower face height (mm at Menton)
    "mand_rot_deg": 2.0,  # mandibular rotation (opening) about Articulare
    "mand_length": 5.9,  # symphysis advance along Go -> Pog
    "maxilla_ap": 3.4,  # antero-posterior position of the maxilla
    "incisor": 1.2,  # common incisor protrusion
    "incisor_indep": 0.7,  # independent upper / lower incisor protrusion (overjet)
    "lip": 1.5,  # lip thickness
    "chin_soft": 1.0,  # soft-tissue chin thickness
    "nasion_y": 1.5,  # anterior cranial base inclination
    "jitter": 1.1,  # independent per-point jitter
}
_HEAD_ROT_MAX_DEG = 6.0
_HEAD_SCALE_MAX = 0.08
_HEAD_SHIFT_MAX_FRAC = 0.04


def _rotate(points: np.ndarray, centre: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rotate (K, 2) points about ``centre``; positive angles turn +x towards +y (clockwise on screen)."""
    c, s = math.cos(angle_rad), math.sin(angle_rad)
    d = points - centre
    return centre + np.stack([c * d[:, 0] - s * d[:, 1], s * d[:, 0] + c * d[:, 1]], axis=1)


def _sample_landmarks_mm(rng: np.random.Generator, sd: Optional[Dict[str, float]] = None) -> np.ndarray:
    """Draw one coherent landmark configuration.

    Args:
        rng: random generator (consumed; always the same number of draws).
        sd: standard deviations overriding :data:`_SHAPE_SD` (used for calibration only).

    Returns:
        (19, 2) landmark ``(x, y)`` in mm of the 240 x 193.5 mm field, ISBI order.
    """
    sd = dict(_SHAPE_SD, **(sd or {}))
    z = rng.standard_normal(13)
    jitter = rng.standard_normal((_N_LANDMARKS, 2))
    p = _MEAN_MM.copy()

    # Lower facial height: points below nasion move down in proportion to their depth.
    frac = np.clip((p[:, 1] - p[N, 1]) / (p[ME, 1] - p[N, 1]), 0.0, 1.2)
    p[:, 1] += sd["face_height"] * z[0] * frac

    # Mandibular rotation about the condyle (Articulare): opening / closing of the bite.
    p[_MAND] = _rotate(p[_MAND], p[AR], math.radians(sd["mand_rot_deg"] * z[1]))

    # Mandibular length: the symphysis moves along the Go -> Pog direction, Gonion stays.
    axis = p[POG] - p[GO]
    axis_len = float(np.linalg.norm(axis))
    unit = axis / axis_len
    t = np.clip(((p[_MAND] - p[GO]) @ unit) / axis_len, 0.0, 1.0)
    p[_MAND] += sd["mand_length"] * z[2] * t[:, None] * unit

    # Maxillary antero-posterior position.
    m = sd["maxilla_ap"] * z[3]
    p[_MAXI, 0] += m
    p[PNS, 0] += 0.3 * m

    # Incisor protrusion (correlated upper / lower) and overjet; the lips follow the teeth partly.
    c = sd["incisor"] * z[4]
    du = c + sd["incisor_indep"] * z[5]
    dl = 0.8 * c + sd["incisor_indep"] * z[6]
    p[UIT, 0] += du
    p[LIT, 0] += dl
    p[UL, 0] += 0.5 * du
    p[LL, 0] += 0.5 * dl

    # Soft-tissue thickness (lips together, chin separately).
    lip = sd["lip"] * z[7]
    p[UL, 0] += lip
    p[LL, 0] += lip
    p[SN, 0] += 0.4 * lip
    p[SPOG, 0] += 0.5 * lip + sd["chin_soft"] * z[8]

    # Anterior cranial base inclination.
    p[N, 1] += sd["nasion_y"] * z[9]

    # Small independent jitter.
    p += sd["jitter"] * jitter

    # Similarity transform of the whole head about the ear rods (mean Porion): positioning and size.
    centre = _MEAN_MM[PO]
    rot = math.radians(float(np.clip(sd["head_rot_deg"] * z[10], -_HEAD_ROT_MAX_DEG, _HEAD_ROT_MAX_DEG)))
    scale = 1.0 + float(np.clip(sd["head_scale"] * z[11], -_HEAD_SCALE_MAX, _HEAD_SCALE_MAX))
    field = np.array([FIELD_SIZE_MM_HW[1], FIELD_SIZE_MM_HW[0]])
    shift = np.array([sd["head_shift_x"], sd["head_shift_y"]]) * np.array([z[12], rng.standard_normal()])
    shift = np.clip(shift, -_HEAD_SHIFT_MAX_FRAC * field, _HEAD_SHIFT_MAX_FRAC * field)
    return centre + scale * (_rotate(p, centre, rot) - centre) + shift


# ----------------------------------------------------------------------------------------------------------
# Template of the auxiliary anatomy (mean-shape coordinates in real ISBI pixels; strings name landmarks)
# ----------------------------------------------------------------------------------------------------------

_Pt = Union[str, Tuple[float, float]]

_PARTS: Dict[str, Tuple[int, ...]] = {
    "cranial": (S, N, OR, PO, AR),
    "maxilla": (A, ANS, PNS, UIT),
    "mandible": (B, POG, ME, GN, GO, LIT, AR),
    "soft": (N, SN, UL, LL, SPOG, ANS, POG),
}


def _ellipse_pts(cx: float, cy: float, ax: float, ay: float, t0_deg: float, t1_deg: float, n: int) -> List[_Pt]:
    """Points (x, y) = (cx + ax cos t, cy + ay sin t) for t from t0 to t1 degrees (y down)."""
    t = np.radians(np.linspace(t0_deg, t1_deg, n))
    return [(float(cx + ax * math.cos(v)), float(cy + ay * math.sin(v))) for v in t]


_VAULT_C = (840.0, 830.0)
_VAULT_AX, _VAULT_AY = 640.0, 720.0

_T_VAULT_OUTER: List[_Pt] = _ellipse_pts(*_VAULT_C, _VAULT_AX - 15, _VAULT_AY - 15, 0, -212, 30)
_T_VAULT_MID: List[_Pt] = _ellipse_pts(*_VAULT_C, _VAULT_AX - 45, _VAULT_AY - 45, -4, -210, 30)
_T_VAULT_INNER: List[_Pt] = _ellipse_pts(*_VAULT_C, _VAULT_AX - 80, _VAULT_AY - 80, -8, -207, 30)
_T_OCCIPUT: List[_Pt] = [(330, 1240), (380, 1330), (470, 1380), (560, 1390)]

_T_BRAIN_FLOOR: List[_Pt] = [(700, 1150), (1000, 1080), (1300, 1000)]
_T_FRONTAL_PROFILE: List[_Pt] = [(1470, 700), (1477, 800), (1462, 895), "N"]
_T_FRONTAL_FILL: List[_Pt] = [
    (1410, 700), (1470, 700), (1477, 800), (1462, 895), "N", (1345, 960), (1360, 880), (1385, 780),
]
_T_NASAL_BONE: List[_Pt] = ["N", (1375, 1000), (1420, 1080), (1478, 1140), (1438, 1070)]
_T_FRONTAL_SINUS = (1415.0, 870.0, 28.0, 45.0)

_T_ANT_CRANIAL_BASE: List[_Pt] = [(875, 1005), (1000, 995), (1150, 990), (1290, 978), (1350, 965)]
_T_ORBITAL_ROOF: List[_Pt] = [(950, 1015), (1080, 955), (1220, 950), (1320, 985)]

_T_SPHENOID: List[_Pt] = [
    (752, 992), (735, 1040), (700, 1130), (640, 1260), (560, 1390), "Ar", (790, 1275), (900, 1245), (975, 1185),
    (985, 1085), (930, 1025), (872, 1012), (807, 1005),
]
_T_SPHENOID_SINUS = (905.0, 1130.0, 55.0, 45.0)
_SELLA_RADIUS_MM = 5.0

_T_PETROUS: List[_Pt] = [(440, 1190), (600, 1150), (760, 1125)]
_T_MASTOID = (500.0, 1330.0, 65.0, 95.0)
_EAR_LUMEN_MM = 4.0
_EAR_ROD_WIDTH_MM = 2.2

_ORBIT_HALF_W_MM, _ORBIT_HALF_H_MM = 16.0, 15.0
_T_ZYGOMA: List[_Pt] = [(1080, 1380), (1180, 1330), (1260, 1290), (1330, 1300)]
_T_MAXILLARY_SINUS = (1180.0, 1320.0, 110.0, 70.0)

_T_MAXILLA: List[_Pt] = [
    "ANS", (1388, 1472), "A", (1392, 1562), (1414, 1612), (1385, 1645), (1330, 1628), (1250, 1660), (1100, 1655),
    (1005, 1600), (965, 1505), "PNS", (1100, 1405), (1250, 1410), (1350, 1425),
]
_T_UIT_APEX = (1358.0, 1478.0)
_T_LIT_APEX = (1325.0, 1905.0)
_T_UPPER_TEETH = [(1385, 1690, 1380, 1470), (1330, 1690, 1320, 1500), (1270, 1690, 1265, 1510),
                  (1195, 1690, 1190, 1510), (1100, 1690, 1095, 1515)]
_T_LOWER_TEETH = [(1380, 1700, 1365, 1900), (1325, 1700, 1315, 1900), (1265, 1700, 1260, 1880),
                  (1190, 1700, 1185, 1860), (1095, 1700, 1090, 1850)]

_T_MANDIBLE: List[_Pt] = [
    "Go", (712, 1640), (690, 1500), "Ar", (655, 1285), (672, 1250), (712, 1255), (735, 1300), (792, 1405),
    (860, 1372), (902, 1342), (917, 1420), (932, 1560), (965, 1685), (1050, 1742), (1250, 1748), (1395, 1745),
    (1383, 1795), "B", (1356, 1920), "Pog", "Gn", "Me", (1200, 2012), (1050, 1950), (900, 1872), (792, 1805),
]
_T_SYMPHYSIS_LINGUAL: List[_Pt] = ["Me", (1245, 1985), (1262, 1900), (1300, 1800), (1345, 1755)]
_T_HYOID: List[_Pt] = [(1090, 2170), (1160, 2150), (1215, 2160)]

_T_SOFT: List[Tuple[_Pt, str]] = (
    [(p, "cranial") for p in _ellipse_pts(*_VAULT_C, _VAULT_AX + 55, _VAULT_AY + 55, -5, -225, 26)]
    + [((250, 1700), "cranial"), ((300, 2050), "cranial"), ((330, 2500), "cranial"), ((1120, 2500), "soft"),
       ((1140, 2280), "soft"), ((1225, 2180), "soft"), ((1370, 2120), "soft"), ((1432, 2075), "soft"),
       ("sPog", "soft"), ((1438, 1950), "soft"), ((1428, 1895), "soft"), ((1480, 1860), "soft"),
       ("LL", "soft"), ((1525, 1752), "soft"), ((1492, 1722), "soft"), ((1538, 1672), "soft"), ("UL", "soft"),
       ((1535, 1540), "soft"), ("Sn", "soft"), ((1555, 1470), "soft"), ((1625, 1420), "soft"),
       ((1655, 1370), "soft"), ((1610, 1260), "soft"), ((1530, 1110), "soft"), ((1468, 985), "soft"),
       ((1525, 895), "soft"), ((1545, 790), "cranial")]
)
_T_AIRWAY: List[_Pt] = [(930, 1380), (800, 1420), (690, 1520), (640, 1700), (625, 1950), (640, 2200), (735, 2200),
                        (725, 1950), (740, 1720), (800, 1560), (900, 1480), (960, 1440)]
_T_SOFT_PALATE: List[_Pt] = ["PNS", (960, 1500), (925, 1570)]
_T_VERTEBRAE = [  # centre x, centre y, half width, half height, tilt deg (C2 .. C5)
    (505, 1600, 70, 130, -8), (520, 1840, 68, 55, -6), (535, 1990, 68, 55, -4), (545, 2140, 68, 55, -2),
]
_T_DENS = (515.0, 1430.0, 35.0, 60.0)


class _Warper:
    """Carries auxiliary template points from the mean shape onto one sampled landmark configuration.

    For each part a similarity is fitted (least squares, complex-number form) from the mean part landmarks
    to the current ones; the fitted residuals at the part landmarks are interpolated to auxiliary points with
    inverse squared distance weights, so a contour control point next to a landmark follows it closely.
    """

    def __init__(self, landmarks_mm: np.ndarray) -> None:
        self.lm = landmarks_mm
        mean = _MEAN_MM[:, 0] + 1j * _MEAN_MM[:, 1]
        cur = landmarks_mm[:, 0] + 1j * landmarks_mm[:, 1]
        self._fits: Dict[str, Tuple[complex, complex, complex, np.ndarray, np.ndarray]] = {}
        for name, idx in _PARTS.items():
            ii = np.array(idx)
            zm, zc = mean[ii], cur[ii]
            mm, mc = zm.mean(), zc.mean()
            a = complex(np.sum(np.conj(zm - mm) * (zc - mc)) / np.sum(np.abs(zm - mm) ** 2))
            resid = zc - (mc + a * (zm - mm))
            self._fits[name] = (a, mm, mc, zm, resid)

    def angle(self, part: str) -> float:
        """Rotation (radians, +x towards +y) of a part relative to the mean shape."""
        return float(np.angle(self._fits[part][0]))

    def scale(self, part: str) -> float:
        """Isotropic scale of a part relative to the mean shape."""
        return float(abs(self._fits[part][0]))

    def __call__(self, pts: Sequence[_Pt], part: str) -> np.ndarray:
        """Warp template points.

        Args:
            pts: sequence of ``(x, y)`` in real ISBI mean-shape pixels, or landmark names (exact landmarks).
            part: one of ``_PARTS``.

        Returns:
            (K, 2) ``(x, y)`` in mm of the field.
        """
        a, mm, mc, zm, resid = self._fits[part]
        out = np.empty((len(pts), 2))
        for k, p in enumerate(pts):
            if isinstance(p, str):
                out[k] = self.lm[_NAME_TO_INDEX[p]]
                continue
            q = _real_px_to_mm(np.asarray(p, dtype=np.float64))
            z = q[0] + 1j * q[1]
            w = 1.0 / (np.abs(z - zm) ** 2 + 4.0)
            zz = mc + a * (z - mm) + np.sum(w * resid) / np.sum(w)
            out[k] = (zz.real, zz.imag)
        return out


# ----------------------------------------------------------------------------------------------------------
# Rasterisation helpers
# ----------------------------------------------------------------------------------------------------------


def _catmull_rom(points: np.ndarray, closed: bool, samples: int = 8) -> np.ndarray:
    """Uniform Catmull-Rom spline through all control points.

    Args:
        points: (K, 2) control points, K >= 2.
        closed: whether the curve closes on itself.
        samples: samples per segment.

    Returns:
        (M, 2) points on the curve; every control point is on it.
    """
    p = np.asarray(points, dtype=np.float64)
    if len(p) < 3:
        return p
    ext = np.vstack([p[-1], p, p[0], p[1]]) if closed else np.vstack([2 * p[0] - p[1], p, 2 * p[-1] - p[-2]])
    p0, p1, p2, p3 = (ext[i : len(ext) - 3 + i][:, None, :] for i in range(4))
    t = np.linspace(0.0, 1.0, samples, endpoint=False)[None, :, None]
    out = 0.5 * (
        2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )
    out = out.reshape(-1, 2)
    return out if closed else np.vstack([out, p[-1]])


def _ellipse_poly(centre: np.ndarray, half_w: float, half_h: float, angle: float, n: int = 48) -> np.ndarray:
    """(n, 2) polygon of an ellipse with the given half axes (mm) rotated by ``angle`` radians."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    pts = np.stack([half_w * np.cos(t), half_h * np.sin(t)], axis=1)
    return _rotate(pts, np.zeros(2), angle) + centre


def _superellipse(half_w: float, half_h: float, power: float, n: int = 40) -> np.ndarray:
    """(n, 2) rounded-rectangle polygon |x/a|^p + |y/b|^p = 1 centred at the origin (mm)."""
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    e = 2.0 / power
    return np.stack([half_w * np.sign(c) * np.abs(c) ** e, half_h * np.sign(s) * np.abs(s) ** e], axis=1)


def _tooth_poly(tip: np.ndarray, apex: np.ndarray, width_mm: float, crown_frac: float) -> Tuple[np.ndarray, np.ndarray]:
    """Tapered tooth outline from the incisal tip to the root apex.

    Args:
        tip: (2,) tip in mm.
        apex: (2,) root apex in mm.
        width_mm: largest width (at the cervical line).
        crown_frac: fraction of the length that is crown (enamel).

    Returns:
        (whole tooth polygon (K, 2), crown polygon (K', 2)) in mm.
    """
    d = apex - tip
    length = float(np.linalg.norm(d)) + 1e-9
    d = d / length
    nrm = np.array([-d[1], d[0]])
    s = np.array([0.0, 0.04, 0.12, 0.25, crown_frac, 0.6, 0.8, 0.93, 1.0])
    w = width_mm * np.array([0.12, 0.45, 0.8, 0.97, 1.0, 0.85, 0.6, 0.35, 0.12]) / 2
    centre = tip + s[:, None] * length * d
    left, right = centre + w[:, None] * nrm, centre - w[:, None] * nrm
    whole = np.vstack([left, right[::-1]])
    k = int(np.searchsorted(s, crown_frac)) + 1
    crown = np.vstack([left[:k], right[:k][::-1]])
    return whole, crown


class _Canvas:
    """Additive attenuation accumulator drawn with Pillow on a supersampled grid."""

    def __init__(self, size_hw: Tuple[int, int], spacing_mm: float) -> None:
        h, w = size_hw
        self.ss = int(min(4, max(1, math.ceil(spacing_mm / 0.26))))
        self.size_hw = size_hw
        self.shape = (h * self.ss, w * self.ss)
        self.px_per_mm = self.ss / spacing_mm
        self.offset_x_mm = (w * spacing_mm - FIELD_SIZE_MM_HW[1]) / 2.0
        self.spacing = spacing_mm
        self.layers: Dict[str, np.ndarray] = {
            "soft": np.zeros(self.shape, np.float32),
            "bone": np.zeros(self.shape, np.float32),
        }

    def to_canvas(self, pts_mm: np.ndarray) -> List[Tuple[float, float]]:
        """mm of the field -> supersampled canvas pixel coordinates (pixel centres consistent after pooling)."""
        p = np.asarray(pts_mm, dtype=np.float64).reshape(-1, 2)
        x = ((p[:, 0] + self.offset_x_mm) / self.spacing - 0.5) * self.ss + (self.ss - 1) / 2.0
        y = (p[:, 1] / self.spacing - 0.5) * self.ss + (self.ss - 1) / 2.0
        return list(zip(x.tolist(), y.tolist()))

    def _new(self) -> Tuple[Image.Image, ImageDraw.ImageDraw]:
        img = Image.new("L", (self.shape[1], self.shape[0]), 0)
        return img, ImageDraw.Draw(img)

    def _add(self, img: Image.Image, weight: float, layer: str) -> None:
        box = img.getbbox()  # only touch the drawn region
        if box is None:
            return
        x0, y0, x1, y1 = box
        self.layers[layer][y0:y1, x0:x1] += np.asarray(img.crop(box), dtype=np.float32) * np.float32(weight / 255.0)

    def polygon(
        self, pts_mm: np.ndarray, weight: float, layer: str = "bone", holes: Sequence[np.ndarray] = ()
    ) -> None:
        """Fill a polygon (optionally minus hole polygons) with ``weight``."""
        img, draw = self._new()
        draw.polygon(self.to_canvas(pts_mm), fill=255)
        for hole in holes:
            draw.polygon(self.to_canvas(hole), fill=0)
        self._add(img, weight, layer)

    def line(
        self, pts_mm: np.ndarray, width_mm: float, weight: float, layer: str = "bone", closed: bool = False
    ) -> None:
        """Stroke a polyline of the given width (mm) with ``weight``."""
        pts = self.to_canvas(pts_mm)
        if closed:
            pts = pts + pts[:1]
        img, draw = self._new()
        draw.line(pts, fill=255, width=max(1, int(round(width_mm * self.px_per_mm))), joint="curve")
        self._add(img, weight, layer)

    def pooled(self, layer: str) -> np.ndarray:
        """Box-downsample a layer to the output size. Returns (H, W) float32."""
        a = self.layers[layer]
        h, w = self.size_hw
        return a.reshape(h, self.ss, w, self.ss).mean(axis=(1, 3))


def _smooth_noise(rng: np.random.Generator, shape: Tuple[int, int], sigma_px: float) -> np.ndarray:
    """Zero-mean, unit-SD low-frequency noise of the given shape (gaussian-filtered white noise).

    Wide kernels are applied on a coarser grid and interpolated up, so the cost does not grow with sigma.
    """
    f = max(1, int(sigma_px / 2.0))
    small = (-(-shape[0] // f), -(-shape[1] // f))
    field = ndimage.gaussian_filter(rng.standard_normal(small).astype(np.float32), sigma_px / f, mode="reflect")
    if f > 1:
        field = ndimage.zoom(field, f, order=1, mode="nearest", grid_mode=True)[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-6)


def _coarse_noise(rng: np.random.Generator, shape: Tuple[int, int], cells: Tuple[int, int]) -> np.ndarray:
    """Very smooth noise: a (cells) grid of N(0, 1) values, cubic-interpolated up to ``shape`` (H, W)."""
    grid = rng.standard_normal(cells)
    out = ndimage.zoom(grid, (shape[0] / cells[0], shape[1] / cells[1]), order=3, mode="nearest", grid_mode=True)
    return out[: shape[0], : shape[1]].astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------------


def _draw_anatomy(cv: _Canvas, lm: np.ndarray, rng: np.random.Generator) -> None:
    """Rasterise all structures for one landmark configuration into the canvas layers.

    Args:
        cv: canvas to draw into.
        lm: (19, 2) landmarks ``(x, y)`` in mm.
        rng: random generator for small appearance variations.
    """
    wp = _Warper(lm)
    bone = float(rng.uniform(0.85, 1.15))  # bone density factor
    rot_c = wp.angle("cranial")
    sc_c = wp.scale("cranial")
    down_c = np.array([-math.sin(rot_c), math.cos(rot_c)])  # "down" of the cranium

    def cr(pts: np.ndarray, closed: bool = False) -> np.ndarray:
        return _catmull_rom(np.asarray(pts), closed)

    def blob(tpl: Tuple[float, float, float, float], part: str, weight: float, tilt: float = 0.0) -> None:
        """Filled ellipse from a template (cx, cy, half_w, half_h) in real ISBI pixels."""
        centre = wp([tpl[:2]], part)[0]
        half_w, half_h = tpl[2] * REAL_PIXEL_SPACING_MM * sc_c, tpl[3] * REAL_PIXEL_SPACING_MM * sc_c
        cv.polygon(_ellipse_poly(centre, half_w, half_h, rot_c + tilt), weight)

    # --- soft tissue (silhouette, airway, soft palate) ---
    soft_pts = np.vstack([wp([p], part) for p, part in _T_SOFT])
    cv.polygon(cr(soft_pts, closed=True), float(rng.uniform(0.22, 0.30)), "soft")
    cv.polygon(cr(wp(_T_AIRWAY, "cranial"), closed=True), -0.09, "soft")
    cv.line(cr(wp(_T_SOFT_PALATE, "maxilla")), 7.0, 0.06, "soft")

    # --- cranial vault ---
    outer = np.vstack([wp(_T_VAULT_OUTER, "cranial"), wp(_T_OCCIPUT, "cranial")])
    cv.line(cr(wp(_T_VAULT_MID, "cranial")), 7.0 * sc_c, 0.22 * bone)
    cv.line(cr(outer), 2.2, 0.20 * bone)
    cv.line(cr(wp(_T_VAULT_INNER, "cranial")), 1.8, 0.16 * bone)
    inner_fill = np.vstack([wp(_T_VAULT_INNER, "cranial"), wp(_T_BRAIN_FLOOR, "cranial")])
    cv.polygon(cr(inner_fill, closed=True), 0.06, "soft")  # brain + overlapping lateral skull walls

    # frontal bone, frontal sinus, nasal bones with the frontonasal notch (Nasion)
    cv.polygon(cr(wp(_T_FRONTAL_FILL, "cranial"), closed=True), 0.22 * bone)
    blob(_T_FRONTAL_SINUS, "cranial", -0.12 * bone)
    cv.line(cr(wp(_T_FRONTAL_PROFILE, "cranial")), 2.4, 0.22 * bone)
    cv.polygon(cr(wp(_T_NASAL_BONE, "cranial"), closed=True), 0.26 * bone)

    # anterior cranial base, orbital roofs, petrous ridge, mastoid
    cv.line(cr(wp(_T_ANT_CRANIAL_BASE, "cranial")), 3.0, 0.22 * bone)
    cv.line(cr(wp(_T_ORBITAL_ROOF, "cranial")), 1.6, 0.15 * bone)
    cv.line(cr(wp(_T_PETROUS, "cranial")), 4.0, 0.12 * bone)
    blob(_T_MASTOID, "cranial", 0.10 * bone, tilt=0.3)

    # sphenoid / clivus with the sella turcica (dark pit, bright floor; Sella at the centre)
    r_s = _SELLA_RADIUS_MM * sc_c * float(rng.uniform(0.9, 1.1))
    pit = _ellipse_poly(lm[S], r_s, r_s, 0.0)
    cv.polygon(cr(wp(_T_SPHENOID, "cranial"), closed=True), 0.28 * bone, holes=[pit])
    blob(_T_SPHENOID_SINUS, "cranial", -0.12 * bone)
    arc_t = np.radians(np.linspace(-10, 190, 24)) + rot_c
    floor = lm[S] + (r_s + 0.6) * np.stack([np.cos(arc_t), np.sin(arc_t)], axis=1)
    cv.line(floor, 1.4, 0.30 * bone)

    # orbit rim: Orbitale at its lowest point
    orb_c = lm[OR] - _ORBIT_HALF_H_MM * sc_c * down_c
    orbit = _ellipse_poly(orb_c, _ORBIT_HALF_W_MM * sc_c, _ORBIT_HALF_H_MM * sc_c, rot_c, 64)
    cv.line(orbit, 1.8, 0.16 * bone, closed=True)
    cv.line(cr(wp(_T_ZYGOMA, "cranial")), 3.5, 0.10 * bone)
    blob(_T_MAXILLARY_SINUS, "maxilla", -0.07 * bone)

    # ear rod around the dark ear canal: Porion at the top of the canal
    ear_c = lm[PO] + _EAR_LUMEN_MM * down_c
    cv.polygon(_ellipse_poly(ear_c, _EAR_LUMEN_MM, _EAR_LUMEN_MM, 0.0), -0.10)
    rr = _EAR_LUMEN_MM + _EAR_ROD_WIDTH_MM / 2
    cv.line(_ellipse_poly(ear_c, rr, rr, 0.0, 48), _EAR_ROD_WIDTH_MM, 0.45, closed=True)

    # cervical vertebrae and dens
    for cx, cy, hw, hh, tilt in _T_VERTEBRAE:
        c = wp([(cx, cy)], "cranial")[0]
        poly = _superellipse(hw / 10 * sc_c, hh / 10 * sc_c, 4.0)
        poly = _rotate(poly, np.zeros(2), rot_c + math.radians(tilt)) + c
        cv.polygon(poly, 0.16 * bone)
        cv.line(poly, 1.2, 0.10 * bone, closed=True)
    blob(_T_DENS, "cranial", 0.14 * bone)

    # --- maxilla: body, palate bar to PNS / ANS, teeth ---
    cv.polygon(cr(wp(_T_MAXILLA, "maxilla"), closed=True), 0.11 * bone)
    pal_d = lm[ANS] - lm[PNS]
    pal_len = float(np.linalg.norm(pal_d))
    pal_u = pal_d / pal_len
    pal_n = np.array([-pal_u[1], pal_u[0]])  # points down (oral side)
    f = np.linspace(0.0, 1.0, 16)
    prof_w = np.sqrt(np.clip(4 * f * (1 - f), 0, 1)) ** np.where(f > 0.5, 1.6, 0.7)
    centre = lm[PNS] + f[:, None] * pal_d
    top = centre - (1.0 * prof_w)[:, None] * pal_n
    bottom = centre + (5.0 * prof_w)[:, None] * pal_n
    cv.polygon(np.vstack([top, bottom[::-1]]), 0.22 * bone)
    cv.line(np.vstack([top, bottom[::-1], top[:1]]), 1.0, 0.10 * bone)

    enamel = 0.30 * bone
    for tx, ty, ax_, ay_ in _T_UPPER_TEETH:
        t_, a_ = wp([(tx, ty), (ax_, ay_)], "maxilla")
        whole, crown = _tooth_poly(t_, a_, 8.0, 0.42)
        cv.polygon(whole, 0.06 * bone)
        cv.polygon(crown, 0.07 * bone)
    apex_u = wp([_T_UIT_APEX], "maxilla")[0]
    whole, crown = _tooth_poly(lm[UIT], apex_u, 7.2, 0.45)
    cv.polygon(whole, 0.22 * bone)
    cv.polygon(crown, enamel)

    # --- mandible: body + ramus, cortex, symphysis, lower teeth ---
    mand = cr(wp(_T_MANDIBLE, "mandible"), closed=True)
    cv.polygon(mand, 0.12 * bone)
    cv.line(mand, 2.6, 0.22 * bone, closed=True)
    cv.line(cr(wp(_T_SYMPHYSIS_LINGUAL, "mandible")), 2.4, 0.16 * bone)
    cv.line(cr(wp(_T_HYOID, "mandible")), 3.0, 0.14 * bone)
    for tx, ty, ax_, ay_ in _T_LOWER_TEETH:
        t_, a_ = wp([(tx, ty), (ax_, ay_)], "mandible")
        whole, crown = _tooth_poly(t_, a_, 8.0, 0.40)
        cv.polygon(whole, 0.06 * bone)
        cv.polygon(crown, 0.07 * bone)
    apex_l = wp([_T_LIT_APEX], "mandible")[0]
    whole, crown = _tooth_poly(lm[LIT], apex_l, 6.4, 0.45)
    cv.polygon(whole, 0.22 * bone)
    cv.polygon(crown, enamel)


def _render(cv: _Canvas, rng: np.random.Generator) -> np.ndarray:
    """Turn the attenuation layers into a radiograph-like 8-bit image.

    Args:
        cv: canvas with the drawn layers.
        rng: random generator.

    Returns:
        (H, W) uint8 image.
    """
    h, w = cv.size_hw
    px_mm = 1.0 / cv.spacing
    soft = cv.pooled("soft")
    bone = cv.pooled("bone")
    # trabecular / overlap texture on bone, coarse texture on soft tissue
    tex = _smooth_noise(rng, (h, w), 1.2 * px_mm)
    tex2 = _smooth_noise(rng, (h, w), 6.0 * px_mm)
    att = soft * (1.0 + 0.08 * tex2) + bone * (1.0 + 0.18 * tex + 0.10 * tex2)
    att = np.clip(att, 0.0, None)
    att = ndimage.gaussian_filter(att, float(rng.uniform(0.35, 0.6)) * px_mm, mode="nearest")

    k = float(rng.uniform(2.2, 3.0))
    img = 1.0 - np.exp(-k * att)
    img /= 1.0 - math.exp(-k * 1.0)

    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    yy /= h
    xx /= w
    # low-frequency background (film fog / scatter) with a random linear gradient
    g = rng.normal(0.0, 0.04, size=2)
    fog = float(rng.uniform(0.03, 0.10)) + g[0] * (xx - 0.5) + g[1] * (yy - 0.5)
    fog = fog + 0.02 * _coarse_noise(rng, (h, w), (6, 5))
    img = img + fog
    # vignette
    cx, cy = 0.5 + rng.uniform(-0.1, 0.1), 0.5 + rng.uniform(-0.1, 0.1)
    r2 = ((xx - cx) / 0.8) ** 2 + ((yy - cy) / 0.8) ** 2
    img = img * (1.0 - float(rng.uniform(0.10, 0.30)) * r2)
    # contrast / gamma / brightness
    img = np.clip(img, 0.0, None) ** float(rng.uniform(0.8, 1.25))
    img = img * float(rng.uniform(0.85, 1.1)) + float(rng.uniform(-0.03, 0.05))
    # Poisson-like (signal dependent) + Gaussian noise
    img = img + np.sqrt(np.clip(img, 0.0, None)) * float(rng.uniform(0.01, 0.025)) * rng.standard_normal((h, w))
    img = img + float(rng.uniform(0.004, 0.012)) * rng.standard_normal((h, w))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------------------


def _mm_to_px(pts_mm: np.ndarray, size_hw: Tuple[int, int]) -> np.ndarray:
    """mm of the field -> output pixel (x, y) with pixel centres at integers."""
    h, w = size_hw
    s = FIELD_SIZE_MM_HW[0] / h
    off = (w * s - FIELD_SIZE_MM_HW[1]) / 2.0
    return np.stack([(pts_mm[:, 0] + off) / s - 0.5, pts_mm[:, 1] / s - 0.5], axis=1)


def synthesize_cephalogram(
    rng: np.random.Generator, image_size_hw: Sequence[int] = DEFAULT_IMAGE_SIZE_HW
) -> Tuple[np.ndarray, np.ndarray]:
    """Generate one synthetic lateral cephalogram with its 19 ISBI landmarks.

    Args:
        rng: seeded ``numpy.random.Generator``; it is consumed, so the result depends on its state.
        image_size_hw: (H, W) in pixels; the image covers the real 240 x 193.5 mm field with square pixels of
            ``240 / H`` mm, so W must be within 5 % of ``H * 1935 / 2400``.

    Returns:
        ``(image, landmarks_xy)``: image is (H, W) uint8 (bone bright, air dark); landmarks_xy is (19, 2)
        float64 ``(x, y)`` in pixels (x right, y down, centre of the first pixel at (0, 0)), ISBI order.
        Every landmark is at least 8 mm inside the image border.

    Raises:
        ValueError: if ``rng`` is not a ``numpy.random.Generator`` or the size is invalid.
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")
    size = _check_size(image_size_hw)
    spacing = FIELD_SIZE_MM_HW[0] / size[0]
    field_w = size[1] * spacing
    off = (field_w - FIELD_SIZE_MM_HW[1]) / 2.0
    lo = np.array([_MARGIN_MM - off, _MARGIN_MM])
    hi = np.array([FIELD_SIZE_MM_HW[1] + off - _MARGIN_MM, FIELD_SIZE_MM_HW[0] - _MARGIN_MM])
    for _ in range(100):
        lm_mm = _sample_landmarks_mm(rng)
        if np.all(lm_mm >= lo) and np.all(lm_mm <= hi):
            break
    else:  # practically unreachable: fall back to the mean shape
        lm_mm = _MEAN_MM.copy()
    cv = _Canvas(size, spacing)
    _draw_anatomy(cv, lm_mm, rng)
    image = _render(cv, rng)
    return image, _mm_to_px(lm_mm, size)


def _case_names(n_train: int, n_test: int) -> Tuple[List[str], List[str]]:
    """Zero-padded case ids: training 001..n_train, test n_train+1..n_train+n_test."""
    width = max(3, len(str(n_train + n_test)))
    train = [f"{i:0{width}d}" for i in range(1, n_train + 1)]
    test = [f"{i:0{width}d}" for i in range(n_train + 1, n_train + n_test + 1)]
    return train, test


_SUBDIRS = {
    "train": Path("RawImage") / "TrainingData",
    "test": Path("RawImage") / "Test1Data",
    "senior": Path("AnnotationsByMD") / "400_senior",
    "junior": Path("AnnotationsByMD") / "400_junior",
}
_OWN_FILE = re.compile(
    r"^(dataset\.json|RawImage/(TrainingData|Test1Data)/\d{3,}\.jpg|AnnotationsByMD/400_(senior|junior)/\d{3,}\.txt)$"
)


def _params(seed: int, n_train: int, n_test: int, size: Tuple[int, int]) -> Dict[str, object]:
    return {
        "pixel_spacing_mm": FIELD_SIZE_MM_HW[0] / size[0],
        "generator": GENERATOR_NAME,
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n_train": n_train,
        "n_test": n_test,
        "image_size_hw": [size[0], size[1]],
    }


def _complete(out: Path, params: Dict[str, object]) -> bool:
    """Whether ``out`` already holds a finished data set with exactly these parameters."""
    meta = out / "dataset.json"
    if not meta.is_file():
        return False
    try:
        existing = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    if existing != params:
        return False
    train, test = _case_names(int(params["n_train"]), int(params["n_test"]))  # type: ignore[arg-type]
    for name in train + test:
        img_dir = _SUBDIRS["train"] if name in train else _SUBDIRS["test"]
        for rel in (img_dir / f"{name}.jpg", _SUBDIRS["senior"] / f"{name}.txt", _SUBDIRS["junior"] / f"{name}.txt"):
            if not (out / rel).is_file():
                return False
    return True


def _clear_own_files(out: Path) -> None:
    """Remove files this generator writes; refuse if the folder holds anything else (e.g. real data)."""
    foreign = []
    own = []
    for p in out.rglob("*"):
        if p.is_dir():
            continue
        rel = p.relative_to(out).as_posix()
        (own if _OWN_FILE.match(rel) else foreign).append(p)
    if foreign:
        raise FileExistsError(
            f"{out} contains files not written by {GENERATOR_NAME} (e.g. {foreign[0]}); refusing to write a "
            "synthetic data set there. Use an empty or previously generated folder."
        )
    for p in own:
        p.unlink()


def _format_xy(xy: np.ndarray) -> str:
    return "".join(f"{int(x)},{int(y)}\n" for x, y in xy)


def generate_synthetic_dataset(
    out_dir: Union[str, Path],
    n_train: int = 40,
    n_test: int = 10,
    seed: int = 0,
    image_size_hw: Sequence[int] = DEFAULT_IMAGE_SIZE_HW,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic data set in the ISBI 2015 layout (see the module docstring).

    Case ``i`` (1-based over training then test) is drawn with ``numpy.random.default_rng(child_i)`` where
    ``child_i`` is the ``i``-th child of ``numpy.random.SeedSequence(seed)``. Senior annotations are the drawn
    landmarks rounded to integer pixels; junior annotations add independent N(0, 1 mm) noise per axis (then
    round and clip into the image). ``dataset.json`` is written last, so an interrupted run is redone.

    Args:
        out_dir: output folder (created if missing). It may be empty, missing, or hold an earlier output of
            this generator (whose files are then replaced); any other content raises ``FileExistsError``.
        n_train: number of training images (>= 1), ids 001..n_train in ``RawImage/TrainingData``.
        n_test: number of test images (>= 0), ids n_train+1.. in ``RawImage/Test1Data``.
        seed: non-negative integer seed.
        image_size_hw: (H, W) pixels; pixel spacing is ``240 / H`` mm (0.5 mm for the default (480, 387)).
        overwrite: regenerate even if an identical data set already exists.

    Returns:
        The output folder as a ``pathlib.Path``.

    Raises:
        ValueError: for invalid counts, seed or size.
        FileExistsError: if ``out_dir`` holds files this generator did not write.
    """
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    n_train, n_test, seed = int(n_train), int(n_test), int(seed)
    if n_train + n_test > 999_999:
        raise ValueError(f"too many cases: {n_train + n_test}")
    size = _check_size(image_size_hw)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a directory")
    params = _params(seed, n_train, n_test, size)
    if not overwrite and _complete(out, params):
        return out

    out.mkdir(parents=True, exist_ok=True)
    _clear_own_files(out)
    for sub in _SUBDIRS.values():
        (out / sub).mkdir(parents=True, exist_ok=True)

    spacing = FIELD_SIZE_MM_HW[0] / size[0]
    junior_sd_px = JUNIOR_NOISE_SD_MM / spacing
    train, test = _case_names(n_train, n_test)
    children = np.random.SeedSequence(seed).spawn(n_train + n_test)
    for k, name in enumerate(train + test):
        rng = np.random.default_rng(children[k])
        image, xy = synthesize_cephalogram(rng, size)
        img_dir = _SUBDIRS["train"] if k < n_train else _SUBDIRS["test"]
        Image.fromarray(image, mode="L").save(out / img_dir / f"{name}.jpg", format="JPEG", quality=_JPEG_QUALITY)
        hi = np.array([size[1] - 1, size[0] - 1])
        senior = np.clip(np.rint(xy), 0, hi).astype(np.int64)
        junior = np.clip(np.rint(xy + rng.normal(0.0, junior_sd_px, size=xy.shape)), 0, hi).astype(np.int64)
        (out / _SUBDIRS["senior"] / f"{name}.txt").write_text(_format_xy(senior))
        (out / _SUBDIRS["junior"] / f"{name}.txt").write_text(_format_xy(junior))
    (out / "dataset.json").write_text(json.dumps(params, indent=2) + "\n")
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line entry point: ``python -m bundle.synthetic --out DIR [...]``.

    Args:
        argv: arguments (default ``sys.argv[1:]``).

    Returns:
        Process exit code (0 on success).
    """
    parser = argparse.ArgumentParser(
        prog="python -m bundle.synthetic",
        description="Write a deterministic synthetic cephalometric data set in the ISBI 2015 layout.",
    )
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--n-train", type=int, default=40, help="number of training images (default 40)")
    parser.add_argument("--n-test", type=int, default=10, help="number of test images (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("H", "W"), default=list(DEFAULT_IMAGE_SIZE_HW),
                        help="image size in pixels (default 480 387 = 0.5 mm pixels)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate even if up to date")
    args = parser.parse_args(argv)
    try:
        out = generate_synthetic_dataset(
            args.out, args.n_train, args.n_test, args.seed, tuple(args.size), args.overwrite
        )
    except (ValueError, FileExistsError) as err:
        parser.error(str(err))
    meta = json.loads((out / "dataset.json").read_text())
    h, w = meta["image_size_hw"]
    print(
        f"synthetic ISBI-layout data set in {out.resolve()} ({meta['n_train']} train + {meta['n_test']} test, "
        f"{h}x{w} px, {meta['pixel_spacing_mm']} mm/px, seed {meta['seed']})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
