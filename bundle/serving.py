"""The inference bundle held in memory for a server: one image per request, with exactly the outputs
``configs/inference.yaml`` writes for it, and a label map of its landmarks for viewers that show segmentations
(3D Slicer's MONAI Label module). ``scripts/monailabel_app`` serves it through MONAI Label.

Examples::

    predictor = LandmarkPredictor()                     # configs/inference.yaml and the shipped weights, loaded once
    result = predictor("IN/001.bmp", "OUT/001")         # OUT/001/landmarks.csv, 001.mrk.json, ... and the result
    write_label_map("001_label.nrrd", result)           # landmark i is a 2 mm disc of value i in 001.bmp's geometry
    # corrected label maps back: a training folder, then both networks fine-tuned on it
    labels_to_training_folder([{"image": "IN/001.bmp", "label": "001_label.nrrd"}], "TRAIN")
    FineTuner("MODELS")("TRAIN")                        # MODELS/model.pt, MODELS/refine.pt, MODELS/train_stats.json
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .io import CephDataError
from .settings import copy_model_settings

logger = logging.getLogger(__name__)

__all__ = ["FineTuner", "LandmarkPredictor", "labels_to_training_folder", "landmark_label_map", "single_image",
           "write_label_map"]

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
            for handler in self._loaders:  # the weights are in: no more reading them
                self.evaluator.remove_event_handler(handler, Events.STARTED)
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


def labels_to_training_folder(pairs: Sequence[Mapping[str, str]], out: str | Path, n_landmarks: int = 19,
                              names: Sequence[str] | None = None,
                              errors: Sequence[Sequence[str]] = ()) -> tuple[list[str], list[list[str]]]:
    """Label maps back as landmarks: for each ``{"image", "label"}`` pair (MONAI Label's ``datastore.datalist()``,
    the submitted ``labels/final`` maps; an image may be a folder holding one, a DICOM series), a copy of the image
    named as its label (``LABEL_STEM.ext``) and its landmarks as ``LABEL_STEM.csv`` (``landmark,name,x,y``
    in pixels of the image, each region's centre: :func:`bundle.io.read_label_map_landmarks`) in ``out``, the training
    folder of ``configs/folder_data.yaml``. A label that cannot be read (a landmark with no region, a value too many,
    no image) is listed, not written, and the rest go on.

    Returns:
        ``(written, errors)``: the image names written, and ``[label, error]`` rows (also ``out/errors.csv``), after
        the ``errors`` given (labels the caller found no image for).
    """
    import shutil

    from . import ISBI_LANDMARK_NAMES
    from .io import atomic_write_csv, image_geometry, image_stem, read_label_map_landmarks

    names = list(names or ISBI_LANDMARK_NAMES)
    names += [f"L{i + 1}" for i in range(len(names), n_landmarks)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    errors = [list(e) for e in errors]
    for pair in pairs:
        label = Path(pair["label"])
        try:
            image = single_image(pair["image"])  # a DICOM series' folder: its one image
            if not image.is_file():
                raise CephDataError(image, "image not found")
            yx = read_label_map_landmarks(label, n_landmarks, image_geometry(image))
        except (CephDataError, OSError, ValueError) as e:
            errors.append([label.name, str(e)])
            continue
        # named by the label (MONAI Label names it by the image's id): the files of two series both called
        # IM0001 stay apart
        stem = image_stem(label.name)
        target = out / f"{stem}{image.name[len(image_stem(image.name)):]}"
        if image.resolve() != target.resolve():
            shutil.copy2(image, target)
        atomic_write_csv(out / f"{stem}.csv", [["landmark", "name", "x", "y"]]
                         + [[i + 1, names[i], f"{x:.2f}", f"{y:.2f}"] for i, (y, x) in enumerate(yx.tolist())])
        written.append(target.name)
    atomic_write_csv(out / "errors.csv", [["label", "error"]] + errors)
    return written, errors


class FineTuner:
    """Both networks of the inference bundle fine-tuned on a training folder (images with ``NAME.csv`` beside them:
    :func:`labels_to_training_folder`), starting from the weights the inference uses: the global network with
    ``configs/train.yaml`` + the shipped recipe + ``configs/folder_data.yaml``, then the refinement network with
    ``configs/refine.yaml``, each a ``python -m monai.bundle run training`` of its own (its log streamed to this
    process's output). Each run validates the starting weights first (``--val_at_start true``) and keeps the best
    checkpoint by validation MRE, so a stage whose training does not beat its starting weights on the held-out images
    keeps them. The results go into ``model_dir`` as ``model.pt`` and ``refine.pt`` (each replaced whole, never half
    written), with ``train_stats.json`` (images, epochs, validation MRE before and after, minutes).

    Args:
        model_dir: where the fine-tuned weights go (and the runs, in ``model_dir/runs``).
        bundle_root: the bundle (default: the one this package is in).
        global_configs: the global network's training configs, relative to the bundle (default: the shipped
            recipe's: train.yaml, isbi_gpu.yaml, maht_net.yaml, then folder_data.yaml).
        refine_configs: the refinement network's (default: train.yaml, refine.yaml, folder_data.yaml).
        start: ``{"global": path, "refine": path}`` of the weights to start from (default: ``model_dir``'s when
            an earlier fine-tuning left them, else the shipped ``models/model.pt`` and ``models/refine.pt``).
        overrides: config values for both runs (``{"num_landmarks": 19, "pixel_spacing_mm": 0.1}``); the landmark
            names default to ISBI's for 19 landmarks.
    """

    GLOBAL_CONFIGS = ("configs/train.yaml", "configs/isbi_gpu.yaml", "configs/maht_net.yaml", "configs/folder_data.yaml")
    REFINE_CONFIGS = ("configs/train.yaml", "configs/refine.yaml", "configs/folder_data.yaml")
    WEIGHT_FILES = {"global": "model.pt", "refine": "refine.pt"}  # in model_dir, as in the bundle's models/
    # the options of a fine-tuning (the MONAI Label task offers these; time_budget_minutes 0 or None: the epochs decide)
    DEFAULTS = {"max_epochs": 10, "refine_max_epochs": 10, "learning_rate": 5e-4, "refine_learning_rate": 5e-4,
                "val_fraction": 0.2, "time_budget_minutes": None}

    def __init__(self, model_dir: str | Path, bundle_root: str | Path | None = None,
                 global_configs: Sequence[str] | None = None, refine_configs: Sequence[str] | None = None,
                 start: Mapping[str, str | Path] | None = None, overrides: Mapping[str, Any] | None = None):
        self.root = Path(bundle_root) if bundle_root else BUNDLE_ROOT
        self.model_dir = Path(model_dir).resolve()
        self.global_configs = list(global_configs or self.GLOBAL_CONFIGS)
        self.refine_configs = list(refine_configs or self.REFINE_CONFIGS)
        self.start = dict(start or {})
        self.overrides = dict(overrides or {})

    def weights(self) -> dict[str, Path]:
        """The weights the next fine-tuning starts from (and the inference should use): ``model_dir``'s when there,
        else the shipped ones."""
        found = {}
        for stage, name in self.WEIGHT_FILES.items():
            mine = self.model_dir / name
            found[stage] = Path(self.start.get(stage) or (mine if mine.is_file() else self.root / "models" / name))
        return found

    def __call__(self, data_dir: str | Path, max_epochs: int = DEFAULTS["max_epochs"],
                 refine_max_epochs: int = DEFAULTS["refine_max_epochs"],
                 learning_rate: float = DEFAULTS["learning_rate"],
                 refine_learning_rate: float = DEFAULTS["refine_learning_rate"],
                 val_fraction: float = DEFAULTS["val_fraction"],
                 time_budget_minutes: float | None = DEFAULTS["time_budget_minutes"]) -> dict:
        """Fine-tune on ``data_dir`` (``refine_max_epochs`` 0: the global network only) and return the stats written
        to ``model_dir/train_stats.json``. Raises ``RuntimeError`` (with the first exception in the run's log) when a
        run fails; what an earlier fine-tuning left in ``model_dir`` is then kept."""
        import json
        import os
        import re
        import shutil
        import subprocess
        import sys
        import time

        from .io import atomic_write_text, folder_datalist

        data_dir = Path(data_dir).resolve()  # the runs start in the bundle's folder
        n_images = sum(Path(item["label_files"][0]).is_file() for item in folder_datalist(data_dir, landmark_suffix=".csv"))
        if n_images < 2:
            raise ValueError(f"{data_dir}: {n_images} image(s) with landmarks; fine-tuning needs at least 2 (one "
                             f"validates)")
        val_fraction = max(float(val_fraction), 1.0 / n_images)  # at least one image validates
        start = self.weights()
        runs = self.model_dir / "runs" / time.strftime("%Y%m%d_%H%M%S")
        # validation after every epoch, the starting weights first; the epochs (or the given budget) decide, not a
        # recipe's own time budget (the GPU recipe's 5 minutes) or early stopping; one warm-up epoch
        overrides = {"dataset_dir": str(data_dir), "landmark_suffix": ".csv", "val_fraction": val_fraction,
                     "val_at_start": True, "val_interval": 1, "early_stop_patience": 1000, "progress_bar": False,
                     "time_budget_minutes": None, "warmup_epochs": "$min(1, @max_epochs - 1)", "num_workers": min(4, os.cpu_count() or 1),
                     **self.overrides}
        n = int(overrides.get("num_landmarks", 19))
        if "landmark_names" not in overrides and n == 19:
            overrides["landmark_names"] = "$bundle.ISBI_LANDMARK_NAMES"
        stages = [("global", self.global_configs, max_epochs, learning_rate)]
        if refine_max_epochs > 0:
            stages.append(("refine", self.refine_configs, refine_max_epochs, refine_learning_rate))
        stats: dict[str, Any] = {"data_dir": str(data_dir), "n_images": n_images, "val_fraction": val_fraction,
                                 "runs": str(runs), "stages": {}}
        t_all = time.time()
        for stage, configs, epochs, lr in stages:
            out = runs / stage
            args = {**overrides, "output_dir": str(out), "warm_start": str(start[stage]), "max_epochs": int(epochs),
                    "learning_rate": float(lr), "bundle_root": str(self.root)}
            if time_budget_minutes:
                args["time_budget_minutes"] = float(time_budget_minutes) / len(stages)
                args["time_budget_lengthen"] = False
            cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file",
                   "[" + ",".join(f"'{self.root / c}'" for c in configs) + "]"]
            for k, v in args.items():
                # None as an expression: MONAI's run drops an override whose value is None
                cmd += [f"--{k}", "$None" if v is None else v if isinstance(v, str) else repr(v)]
            out.mkdir(parents=True, exist_ok=True)
            logger.info("fine-tuning the %s network: %s", stage, " ".join(cmd))
            t0 = time.time()
            env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(self.root), os.environ.get("PYTHONPATH", "")])}
            with open(out / "log.txt", "w") as log:
                log.write(" ".join(cmd) + "\n")  # the command, to run again by hand
                proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
                for line in proc.stdout:  # streamed: MONAI Label shows the training task's output
                    log.write(line)
                    log.flush()
                    sys.stdout.write(line)
                    sys.stdout.flush()
                rc = proc.wait()
            if rc != 0 or not (out / "model.pt").is_file():
                lines = (out / "log.txt").read_text().splitlines()
                # a chained traceback prints its root cause first
                cause = next((s for s in lines if re.match(r"^[\w.]+(Error|Exception): ", s)), lines[-1] if lines else "")
                raise RuntimeError(f"fine-tuning the {stage} network failed (exit {rc}): {cause} (log: {out / 'log.txt'})")
            curve = json.loads((out / "learning_curve.json").read_text()) if (out / "learning_curve.json").is_file() else []
            mres = [p.get("val_mre") for p in curve if p.get("val_mre") is not None]
            stats["stages"][stage] = {
                "started_from": str(start[stage]), "epochs": int(epochs), "learning_rate": float(lr),
                "val_mre_mm_start": mres[0] if mres else None, "val_mre_mm_best": min(mres) if mres else None,
                "kept_start": bool(mres) and min(mres) >= mres[0], "minutes": round((time.time() - t0) / 60, 2),
            }
        self.model_dir.mkdir(parents=True, exist_ok=True)
        for stage, *_ in stages:  # only when every stage succeeded; each file replaced whole
            name = self.WEIGHT_FILES[stage]
            tmp = self.model_dir / f".{name}.tmp"
            shutil.copyfile(runs / stage / "model.pt", tmp)
            os.replace(tmp, self.model_dir / name)
            copy_model_settings(runs / stage, self.model_dir / name)  # what the weights need, beside them
        stats["minutes"] = round((time.time() - t_all) / 60, 2)
        stats["weights"] = {k: str(v) for k, v in self.weights().items()}
        atomic_write_text(self.model_dir / "train_stats.json", json.dumps(stats, indent=1))  # the server reads it
        return stats
