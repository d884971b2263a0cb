"""The inference bundle held in memory for a server: one image per request, with exactly the outputs
``configs/inference.yaml`` writes for it, and a label map of its landmarks for viewers that show segmentations
(3D Slicer's MONAI Label module). ``scripts/monailabel_app`` serves it through MONAI Label.

Examples::

    predictor = LandmarkPredictor()                     # configs/inference.yaml and the shipped weights, loaded once
    result = predictor("IN/001.bmp", "OUT/001")         # OUT/001/landmarks.csv, 001.mrk.json, ... and the result
    write_label_map("001_label.nrrd", result)           # landmark i is a 2 mm disc of value i in 001.bmp's geometry
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .io import CephDataError

logger = logging.getLogger(__name__)

__all__ = ["LandmarkPredictor", "landmark_label_map", "single_image", "write_label_map"]

BUNDLE_ROOT = Path(__file__).resolve().parents[1]


class LandmarkPredictor:
    """``configs/inference.yaml`` (or the given configs) parsed once, its networks loaded once, then run on one
    image per call: the same pre-processing, networks, refinement, checks and output files as
    ``python -m monai.bundle run --config_file configs/inference.yaml`` on a folder holding that image.

    Args:
        config_files: the inference configs, layered (default: ``configs/inference.yaml``; add
            ``configs/inference_fast.yaml`` for the fast CPU profile).
        overrides: config values, as on the command line (``{"refine": False, "ckpt_path": "my.pt"}``).
        bundle_root: the bundle's folder (default: the one this package is in).

    Calls are serialised (a lock): one evaluator runs one image at a time.
    """

    def __init__(self, config_files: Sequence[str | Path] | None = None, overrides: Mapping[str, Any] | None = None,
                 bundle_root: str | Path | None = None):
        from ignite.engine import Events
        from monai.bundle import ConfigParser

        root = Path(bundle_root) if bundle_root else BUNDLE_ROOT
        files = [str(f) for f in (config_files or [root / "configs" / "inference.yaml"])]
        parser = ConfigParser()
        parser.read_config(files)
        # one image per call: no folder to list, no worker processes, no progress bar over one image
        parser.update({"bundle_root": str(root), "datalist": [], "num_workers": 0, "progress_bar": False,
                       "resume": False, **dict(overrides or {})})
        parser.get_parsed_content("initialize")
        self.names = [str(n) for n in parser.get_parsed_content("landmark_names")]
        self.num_landmarks = int(parser.get_parsed_content("num_landmarks"))
        self.preprocessing = parser.get_parsed_content("preprocessing")
        self.writer = parser.get_parsed_content("writer")
        self.evaluator = parser.get_parsed_content("evaluator")
        self.evaluator.add_event_handler(Events.ITERATION_COMPLETED, self._keep)
        # the weights are read at the first call's start; later calls keep them (MONAI's CheckpointLoader would read
        # them again at every run's start)
        from monai.handlers import CheckpointLoader

        handlers = parser.get_parsed_content("handlers") if "handlers" in parser else []
        self._loaders = [h for h in handlers if isinstance(h, CheckpointLoader)]
        self._lock = threading.Lock()
        self._kept: list[tuple[dict, dict]] = []

    def _keep(self, engine) -> None:
        outputs = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        batches = engine.state.batch if isinstance(engine.state.batch, list) else [engine.state.batch]
        self._kept.extend(zip(outputs, batches))

    def __call__(self, image_path: str | Path, output_dir: str | Path, image_name: str | None = None) -> dict:
        """Find the landmarks of one image and write its outputs to ``output_dir`` (``landmarks.csv``,
        ``<stem>.mrk.json``, the overlay if on, ``measurements.csv``, ``checks.csv``, ``readings.csv``,
        ``report.html``).

        Returns:
            ``{"image", "image_path", "landmarks": [{"landmark", "name", "x", "y", "x_mm", "y_mm",
            "uncertainty_mm"}, ...], "measurements": [...], "checks": [...], "readings": [...], "size": [H, W],
            "spacing_mm": [row, col], "pixel_to_lps": 3 x 3, "output_dir"}``: the rows of its CSV files (x, y
            in pixels of the original image, x right, y down) and the image's geometry.

        ``image_path`` may be a folder holding the one image (a DICOM series of one radiograph, as MONAI Label
        downloads it from a DICOMweb server).

        Raises:
            CephDataError: the image cannot be read (missing, empty, corrupt, NaN, a DICOM without spacing, ...;
                a folder with no image or several); the message names the file and the problem, as ``errors.csv``
                does.
        """
        from ignite.engine import Events
        from monai.data import DataLoader, Dataset

        path = single_image(image_path)
        name = image_name or path.name
        output_dir = Path(output_dir)
        loader = DataLoader(Dataset([{"image": str(path), "image_name": name}], self.preprocessing), batch_size=1,
                            num_workers=0)
        with self._lock:
            self._kept = []
            self.writer.output_dir = output_dir
            self.evaluator.data_loader = loader
            self.evaluator.state.epoch_length = len(loader)
            self.evaluator.run()
            kept, self._kept = self._kept, []
            for loader in self._loaders:  # the weights are in: no more reading them
                self.evaluator.remove_event_handler(loader, Events.STARTED)
            self._loaders = []
        if len(kept) != 1:
            raise RuntimeError(f"{path}: the evaluator ran {len(kept)} items, expected 1")
        out, item = kept[0]
        if item.get("error"):
            raise CephDataError(path, str(item["error"]).removeprefix(f"{path}: "))
        from .outputs import (CHECKS_CSV_HEADER, LANDMARKS_CSV_HEADER, MEASUREMENTS_CSV_HEADER, READINGS_CSV_HEADER,
                              _rows_by_image)

        def rows(file: str, header: Sequence[str]) -> list[list[str]]:  # this image's rows of one output CSV
            return _rows_by_image(output_dir / file, header).get(name, [])

        written = rows("landmarks.csv", LANDMARKS_CSV_HEADER)
        if len(written) != self.num_landmarks:  # the writer failed on this image: errors.csv says why
            errors = rows("errors.csv", ["image", "error"])
            raise RuntimeError(f"{path}: no landmarks written ({errors[0][1] if errors else 'no reason given'})")
        return {
            "image": name,
            "image_path": str(path),
            "landmarks": [{"landmark": int(r[1]), "name": r[2], "x": float(r[3]), "y": float(r[4]), "x_mm": float(r[5]),
                           "y_mm": float(r[6]), "uncertainty_mm": float(r[7])} for r in written],
            "measurements": [{"measurement": r[1], "value": float(r[2]), "unit": r[3], "type": int(r[4]),
                              "meaning": r[5]} for r in rows("measurements.csv", MEASUREMENTS_CSV_HEADER)],
            "checks": [r[1] for r in rows("checks.csv", CHECKS_CSV_HEADER)],
            "readings": [r[1] for r in rows("readings.csv", READINGS_CSV_HEADER)],
            "size": [int(v) for v in torch.as_tensor(item["orig_size"]).flatten().tolist()],
            # float32 in the pipeline: written as its shortest decimal (0.1, not 0.10000000149)
            "spacing_mm": [float(str(np.float32(v))) for v in torch.as_tensor(item["spacing"]).flatten().tolist()],
            "pixel_to_lps": torch.as_tensor(item["pixel_to_lps"]).double().reshape(3, 3).tolist(),
            "output_dir": str(output_dir),
        }


def single_image(path: str | Path) -> Path:
    """``path`` itself, or the one image in the folder ``path`` (a DICOM series of one radiograph; its images as
    :func:`bundle.io.folder_datalist` lists a folder's)."""
    from .io import folder_datalist

    path = Path(path)
    if not path.is_dir():
        return path
    images = [Path(item["image"]) for item in folder_datalist(path)]
    if len(images) != 1:
        found = f"{len(images)} images ({', '.join(p.name for p in images[:3])}{', ...' if len(images) > 3 else ''})"
        raise CephDataError(path, f"expected a folder holding one image (a cephalogram's series), found "
                                  f"{found if images else 'none'}")
    return images[0]


def landmark_label_map(result: Mapping[str, Any], radius_mm: float = 2.0) -> np.ndarray:
    """A ``(H, W)`` uint8 label map of an image's landmarks: landmark ``i`` (1-based, as in ``landmarks.csv``) is a
    disc of value ``i`` and radius ``radius_mm`` around it (the 2 mm of the clinical tolerance by default); where
    two discs overlap, each pixel goes to the nearer landmark; 0 elsewhere.

    Args:
        result: a :class:`LandmarkPredictor` result (its ``landmarks``, ``size`` and ``spacing_mm``).
        radius_mm: the disc radius in mm (at least half a pixel is drawn, so every landmark inside the image has
            a pixel).
    """
    if radius_mm <= 0:
        raise ValueError(f"radius_mm should be positive, got {radius_mm}.")
    h, w = (int(v) for v in result["size"])
    sy, sx = (float(v) for v in result["spacing_mm"])
    if len(result["landmarks"]) > 255:
        raise ValueError(f"a uint8 label map holds at most 255 landmarks, got {len(result['landmarks'])}.")
    labels = np.zeros((h, w), dtype=np.uint8)
    nearest = np.full((h, w), np.inf)
    for lm in result["landmarks"]:
        x, y = float(lm["x"]), float(lm["y"])
        ry, rx = max(radius_mm / sy, 0.5), max(radius_mm / sx, 0.5)
        y0, y1 = max(int(np.floor(y - ry)), 0), min(int(np.ceil(y + ry)) + 1, h)
        x0, x1 = max(int(np.floor(x - rx)), 0), min(int(np.ceil(x + rx)) + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue  # outside the image: nothing to draw
        yy, xx = np.mgrid[y0:y1, x0:x1]
        d = np.hypot((yy - y) / ry, (xx - x) / rx)  # 1 on the disc's edge
        inside = (d <= 1.0) & (d < nearest[y0:y1, x0:x1])
        labels[y0:y1, x0:x1][inside] = int(lm["landmark"])
        nearest[y0:y1, x0:x1][inside] = d[inside]
    return labels


def write_label_map(path: str | Path, result: Mapping[str, Any], radius_mm: float = 2.0) -> Path:
    """Write :func:`landmark_label_map` with ITK (``.nrrd``, ``.nii.gz``, ``.mha``, ... by the suffix) as a one-slice
    volume in the image's own geometry (its ``pixel_to_lps``: the header's origin, direction and spacing; 1 mm
    pixels from the origin for a PNG / JPEG / BMP), so 3D Slicer lays it exactly over the image, as it does the
    ``.mrk.json`` point list."""
    import itk

    m = np.asarray(result["pixel_to_lps"], dtype=np.float64).reshape(3, 3)
    step_x, step_y, origin = m[:, 0], m[:, 1], m[:, 2]
    sx, sy = float(np.linalg.norm(step_x)), float(np.linalg.norm(step_y))
    if sx == 0 or sy == 0:
        raise ValueError(f"pixel_to_lps has a zero pixel step: {m.tolist()}")
    normal = np.cross(step_x / sx, step_y / sy)
    direction = np.stack([step_x / sx, step_y / sy, normal], axis=1)  # a column per ITK axis (x, y, slice)
    image = itk.image_from_array(np.ascontiguousarray(landmark_label_map(result, radius_mm)[None]))
    image.SetOrigin([float(v) for v in origin])
    image.SetSpacing([sx, sy, 1.0])
    image.SetDirection(itk.matrix_from_array(np.ascontiguousarray(direction)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    itk.imwrite(image, str(path), compression=True)
    return path
