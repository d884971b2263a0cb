"""Cephalometric landmark detection components that MONAI itself lacks.

Coordinate convention (stated once, used everywhere):

* Files (ISBI txt, CSV, Slicer) hold landmarks as ``(x, y)`` in pixels of the original image, x to the right,
  y down, the centre of the first pixel at ``(0, 0)``.
* Inside the bundle, arrays follow MONAI's array order: an image is ``(C, H, W)`` and landmarks are an
  ``(N, 2)`` array of ``(row, col)`` = ``(y, x)`` in pixels of the current array. Conversion happens at the
  edges (readers and writers) only.
"""

ISBI_LANDMARK_NAMES = (
    "Sella",
    "Nasion",
    "Orbitale",
    "Porion",
    "Subspinale (A point)",
    "Supramentale (B point)",
    "Pogonion",
    "Menton",
    "Gnathion",
    "Gonion",
    "Lower incisal incision",
    "Upper incisal incision",
    "Upper lip",
    "Lower lip",
    "Subnasale",
    "Soft tissue pogonion",
    "Posterior nasal spine",
    "Anterior nasal spine",
    "Articulare",
)
