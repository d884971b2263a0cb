"""A MONAI Label app that serves this bundle's landmarks to 3D Slicer's MONAI Label module.

    .venv-monailabel/bin/python -m monailabel.main start_server --app scripts/monailabel_app --studies IMAGES_DIR

in the MONAI Label environment that ``bash scripts/check_monailabel.sh`` sets up (``monailabel start_server ...``
with it activated; docs/README.md, "Serving through MONAI Label"). The model ``cephalometric_landmarks``
runs ``configs/inference.yaml`` (the shipped weights, the refinement pass, the checks) on the image asked for, held
in memory between requests (:class:`bundle.serving.LandmarkPredictor`). It answers with a label map in the image's
geometry, each landmark a disc of its number (2 mm radius: the clinical tolerance), which Slicer shows as 19 named
segments over the radiograph, and a JSON result with the landmarks in pixels and mm, their expected errors, the
cephalometric analysis, the checks and the 3D Slicer point list (``markups``).

Active learning (Slicer's "Next Sample" with the strategy ``expected_error``): the unlabelled image whose landmarks
the model is least sure of, by the mean expected error that the scoring method ``expected_error`` keeps for each
unlabelled image (found with the weights in use; run again for an image when the weights change).

Training (``POST /train/cephalometric_landmarks``, Slicer's "Train" button): both networks are fine-tuned on the
labels submitted so far (``labels/final``: each landmark's region read back as its centre), starting from the
weights the model answers with, by the bundle's own training configs (:class:`bundle.serving.FineTuner`); each
run validates its starting weights first on the held-out part and keeps the best, so training that does not help
leaves the weights as they were. The new weights go to ``model/`` in this app's folder (``--conf model_dir``), and
the next request is answered with them. Delete that folder to go back to the shipped weights.

``--conf`` keys (strings, as MONAI Label passes them): ``fast`` (``true``: the fast CPU profile,
``configs/inference_fast.yaml``), ``configs`` (comma-separated config files layered on ``configs/inference.yaml``,
relative to the bundle), ``overrides`` (a JSON object of config values, e.g. ``{"refine": false}``; the overlay
picture is off unless it says ``"overlay": true``, since the answer does not carry it), ``radius_mm`` (the discs'
radius), ``bundle_root`` (default: the bundle this app is in), ``model_dir`` (where training writes its weights;
default: ``model/`` in this app's folder, ``model_fast/`` for the fast profile), ``train_configs`` (the global
network's training configs, comma-separated, relative to the bundle; default: the shipped network's recipe,
train.yaml, isbi_gpu.yaml or for the fast profile isbi_cpu.yaml, maht_net.yaml, folder_data.yaml).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, Tuple

from monailabel.config import settings
from monailabel.datastore.local import LocalDatastore
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.scoring import ScoringMethod
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)

MODEL_NAME = "cephalometric_landmarks"
IMAGE_SUFFIXES = ("*.bmp", "*.jpeg", "*.jpg", "*.png", "*.tif", "*.tiff", "*.dcm", "*.mha", "*.nrrd", "*.nii",
                  "*.nii.gz")  # the studies folder's images MONAI Label lists, besides its own defaults


def _bad_input(message: str) -> Exception:
    """An error for the client: HTTP 422 with ``message`` as its detail (MONAI Label's own exceptions reach the
    client as a bare "Internal Server Error")."""
    from fastapi import HTTPException

    return HTTPException(status_code=422, detail=message)


def _true(value: Any) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


class LandmarkInferTask(InferTask):
    """The bundle's inference on one image: a label map (landmark ``i`` a disc of value ``i``) and a JSON result."""

    def __init__(self, bundle_root: Path, config_files: list[Path], overrides: Dict[str, Any], radius_mm: float,
                 model_dir: Path):
        self.bundle_root, self.config_files, self.overrides = bundle_root, config_files, overrides
        self.model_dir = model_dir
        self.radius_mm = radius_mm
        self._weights: Dict[str, Any] = {}
        self.predictor = self._load()
        names = self.predictor.names
        super().__init__(
            type=InferType.SEGMENTATION,
            labels={name: i + 1 for i, name in enumerate(names)},
            dimension=2,
            description=f"{len(names)} cephalometric landmarks on a lateral skull radiograph (MAHT-Net and a "
                        f"refinement network, bundle {self.bundle_root.name}); each a {radius_mm:g} mm disc",
            config={"radius_mm": radius_mm},
        )

        self._warm_up()

    def _warm_up(self) -> None:
        """Write a tiny label map once: ITK loads its file modules on first use (about 4 s), at start, not on
        the first request."""
        from bundle.serving import write_label_map

        with tempfile.TemporaryDirectory() as tmp:
            write_label_map(Path(tmp) / "warm_up.nrrd", {"landmarks": [], "size": [8, 8], "spacing_mm": [1.0, 1.0],
                                                         "pixel_to_lps": [[1, 0, 0], [0, 1, 0], [0, 0, 0]]})

    def _trained(self) -> Dict[str, Any]:
        """The weights training left in the model folder, with their modification times (empty: none yet)."""
        found = {}
        from bundle.serving import FineTuner

        for key, stage in (("ckpt_path", "global"), ("refine_ckpt_path", "refine")):
            path = self.model_dir / FineTuner.WEIGHT_FILES[stage]
            if path.is_file() and key not in self.overrides:  # weights named in --conf overrides win
                found[key] = (str(path), path.stat().st_mtime_ns)
        return found

    def _load(self):
        from bundle.serving import LandmarkPredictor

        from monai.bundle import ConfigParser

        self._weights = self._trained()
        overrides = {**self.overrides, **{k: path for k, (path, _) in self._weights.items()}}
        if self._weights:
            logger.info("answering with the fine-tuned weights in %s", self.model_dir)
        parser = ConfigParser()  # which files the predictor reads its weights from
        parser.read_config([str(f) for f in self.config_files])
        parser.update({"bundle_root": str(self.bundle_root), **overrides})
        self._weight_files = {"global": str(parser.get_parsed_content("ckpt_path")),
                              "refine": str(parser.get_parsed_content("refine_ckpt_path"))}
        return LandmarkPredictor(self.config_files, overrides, self.bundle_root)

    def weights(self) -> Dict[str, str]:
        """The weights the answers come from (the model folder's or the bundle's)."""
        return dict(self._weight_files)

    def current_predictor(self):
        """The predictor, loaded again first when training (another process) has replaced the weights since."""
        if self._trained() != self._weights:
            self.predictor = self._load()
        return self.predictor

    def is_valid(self) -> bool:
        return True  # the predictor loaded its weights when the app started

    def __call__(self, request) -> Tuple[str, Dict]:
        from bundle.io import CephDataError
        from bundle.serving import write_label_map

        image = request.get("image")
        if not isinstance(image, str) or not image:
            raise _bad_input("no image to read: the image asked for is neither in the datastore nor a file")
        radius_mm = float(request.get("radius_mm", self.radius_mm))
        predictor = self.current_predictor()  # the weights a training left, if it has since
        work = Path(tempfile.mkdtemp(prefix="ceph_landmarks_"))
        try:
            try:
                result = predictor(image, work)
            except CephDataError as e:  # a file that cannot be read: the client gets the file and the problem
                raise _bad_input(str(e)) from e
            stem = Path(image).name.split(".")[0] or "image"
            fd, label = tempfile.mkstemp(prefix=f"{stem}_landmarks_", suffix=".nrrd")
            os.close(fd)
            write_label_map(label, result, radius_mm)
            markups = next(work.glob("*.mrk.json"), None)
            answer = {
                "label_names": dict(self.labels),
                "landmarks": result["landmarks"],
                "measurements": result["measurements"],
                "checks": result["checks"],
                "readings": result["readings"],
                "spacing_mm": result["spacing_mm"],
                "radius_mm": radius_mm,
                "markups": json.loads(markups.read_text()) if markups else None,
                "weights": self.weights(),
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)
        logger.info("%s: %d landmarks%s", image, len(result["landmarks"]),
                    f"; to check: {', '.join(result['checks'])}" if result["checks"] else "")
        return label, answer


class LandmarkTrainTask(TrainTask):
    """Fine-tunes both networks on the submitted labels (:class:`bundle.serving.FineTuner`), from the weights the
    model answers with. The request's keys (Slicer's training options): ``max_epochs`` and ``refine_max_epochs``
    (0: the global network only), ``learning_rate``, ``refine_learning_rate``, ``val_fraction`` (the share of the
    labelled images held out to decide whether the new weights are better), ``time_budget_minutes`` (both runs
    together; none: the epochs decide)."""

    def __init__(self, infer: LandmarkInferTask, global_configs: list[str]):
        super().__init__(f"Fine-tune both networks on the submitted landmarks (labels/final), from the weights in "
                         f"use; new weights go to {infer.model_dir}")
        self.infer, self.global_configs = infer, global_configs
        self.model_dir, self.bundle_root = infer.model_dir, infer.bundle_root
        self.names = list(infer.predictor.names)
        # the data settings of the inference (landmarks, spacing of pictures without one) for the training runs
        keys = ("num_landmarks", "pixel_spacing_mm", "dicom_spacing_mm")
        self.overrides = {k: v for k, v in infer.overrides.items() if k in keys}

    def config(self):
        from bundle.serving import FineTuner

        return {**FineTuner.DEFAULTS, "time_budget_minutes": FineTuner.DEFAULTS["time_budget_minutes"] or 0}

    def stats(self):
        path = self.model_dir / "train_stats.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def __call__(self, request, datastore):
        from bundle.serving import FineTuner, labels_to_training_folder

        options = {**self.config(), **{k: v for k, v in request.items() if k in self.config()}}
        data = self.model_dir / "train_data"
        shutil.rmtree(data, ignore_errors=True)  # the labels as they are now
        written, errors = labels_to_training_folder(datastore.datalist(), data, len(self.names), self.names)
        for label, error in errors:
            logger.warning("not trained on: %s", error)
        logger.info("fine-tuning on %d labelled image(s)", len(written))
        tuner = FineTuner(self.model_dir, self.bundle_root, global_configs=self.global_configs,
                          start=self.infer.weights(), overrides=self.overrides)
        stats = tuner(data, max_epochs=int(options["max_epochs"]), refine_max_epochs=int(options["refine_max_epochs"]),
                      learning_rate=float(options["learning_rate"]),
                      refine_learning_rate=float(options["refine_learning_rate"]),
                      val_fraction=float(options["val_fraction"]),
                      time_budget_minutes=float(options["time_budget_minutes"]) or None)
        stats["label_errors"] = [{"label": a, "error": b} for a, b in errors]
        logger.info("fine-tuned: %s", json.dumps(stats["stages"]))
        return stats


SCORE_KEY = "expected_error_mm"  # an image's mean expected landmark error, in its datastore info


class ExpectedErrorScoring(ScoringMethod):
    """Each unlabelled image's landmarks found with the weights in use, and their mean expected error (the calibrated
    ``uncertainty_mm`` of ``landmarks.csv``) kept in its datastore info as ``expected_error_mm``, with the weights it
    was found with: an image already scored with the same weights is not read again. An image that cannot be read gets
    ``expected_error_not_read`` (why) instead, and the strategy offers it first. MONAI Label runs it after start, after training and
    after each "Next Sample" (``MONAI_LABEL_AUTO_UPDATE_SCORING``), or ``POST /scoring/expected_error``."""

    def __init__(self, infer: LandmarkInferTask):
        super().__init__("The mean expected landmark error of each unlabelled image, with the weights in use")
        self.infer = infer

    def __call__(self, request, datastore):
        import time

        from bundle.io import CephDataError

        predictor = self.infer.current_predictor()
        stamp = {k: [v, os.stat(v).st_mtime_ns if os.path.exists(v) else 0] for k, v in self.infer.weights().items()}
        scored, kept, failed = 0, 0, []
        for image_id in datastore.get_unlabeled_images():
            info = datastore.get_image_info(image_id)
            if info.get("expected_error_weights") == stamp:
                kept += 1
                continue
            work = Path(tempfile.mkdtemp(prefix="ceph_score_"))
            try:
                result = predictor(datastore.get_image_uri(image_id), work)
                errors = [p["uncertainty_mm"] for p in result["landmarks"]]
                score = {SCORE_KEY: round(sum(errors) / len(errors), 4),
                         "expected_error_max_mm": round(max(errors), 4), "expected_error_checks": result["checks"]}
            except (CephDataError, OSError, ValueError) as e:
                failed.append(image_id)
                score = {SCORE_KEY: None, "expected_error_not_read": str(e)}
            finally:
                shutil.rmtree(work, ignore_errors=True)
            datastore.update_image_info(image_id, {**score, "expected_error_weights": stamp,
                                                   "expected_error_ts": int(time.time())})
            scored += 1
        logger.info("expected errors: %d image(s) scored, %d kept, %d not read", scored, kept, len(failed))
        return {"scored": scored, "kept": kept, "not_read": failed}


class LargestExpectedError(Strategy):
    """Next sample: the unlabelled image whose landmarks the model is least sure of (the largest mean expected error,
    :class:`ExpectedErrorScoring`); a file it could not read comes before, the images not scored yet after, by id."""

    def __init__(self):
        super().__init__("The unlabelled image with the largest mean expected landmark error (scored first)")

    def __call__(self, request, datastore):
        images = datastore.get_unlabeled_images(request.get("label_tag"), request.get("labels"))
        if not images:
            return None
        infos = {i: datastore.get_image_info(i) for i in images}
        scores = {i: infos[i].get(SCORE_KEY) for i in images}
        # a file the model could not read first (someone should look at it), then the least sure, then the unscored
        ranked = sorted(images, key=lambda i: ("expected_error_not_read" not in infos[i], scores[i] is None,
                                               -(scores[i] or 0.0), i))
        return {"id": ranked[0], SCORE_KEY: scores[ranked[0]]}


class CephalometricLandmarksApp(MONAILabelApp):
    """The bundle's landmarks for MONAI Label: one inference model, ``cephalometric_landmarks``."""

    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        self.bundle_root = Path(conf.get("bundle_root") or Path(app_dir).resolve().parents[1]).resolve()
        if not (self.bundle_root / "configs" / "inference.yaml").is_file():
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR,
                                      f"{self.bundle_root}: no configs/inference.yaml (--conf bundle_root DIR)")
        if str(self.bundle_root) not in sys.path:
            sys.path.insert(0, str(self.bundle_root))  # `import bundle` and the configs' `$import bundle...`
        meta = json.loads((self.bundle_root / "configs" / "metadata.json").read_text())
        configs = [self.bundle_root / "configs" / "inference.yaml"]
        if _true(conf.get("fast", "false")):
            configs.append(self.bundle_root / "configs" / "inference_fast.yaml")
        configs += [self.bundle_root / c.strip() for c in str(conf.get("configs", "")).split(",") if c.strip()]
        try:
            overrides = json.loads(conf.get("overrides") or "{}")
            if not isinstance(overrides, dict):
                raise ValueError(f"got {type(overrides).__name__}")
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise MONAILabelException(MONAILabelError.APP_INIT_ERROR,
                                      f"--conf overrides should be a JSON object such as '{{\"refine\": false}}' ({e})")
        fast = _true(conf.get("fast", "false"))
        # each profile its own folder: the fast profile's global network is another (configs/isbi_cpu.yaml's)
        self.model_dir = Path(conf.get("model_dir") or Path(app_dir) / ("model_fast" if fast else "model")).resolve()
        self.train_configs = [c.strip() for c in str(conf.get("train_configs", "")).split(",") if c.strip()] or [
            "configs/train.yaml", "configs/isbi_cpu.yaml" if fast else "configs/isbi_gpu.yaml", "configs/maht_net.yaml",
            "configs/folder_data.yaml"]
        self.task_args = dict(bundle_root=self.bundle_root, config_files=configs,
                              # no overlay picture: the answer does not carry it (0.3 s a request)
                              overrides={"overlay": False, **overrides},
                              radius_mm=float(conf.get("radius_mm", 2.0)), model_dir=self.model_dir)
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="Cephalometric landmarks",
                         description=meta.get("description", ""), version=meta.get("version", ""))

    def init_datastore(self):
        if self.studies.startswith(("http://", "https://")):
            # DICOMweb: the series as downloaded, not converted to NIfTI: the bundle reads the pixel spacing from
            # the DICOM's own tags (PixelSpacing, ImagerPixelSpacing, ...) and refuses a DICOM with none, where a
            # converted NIfTI carries the converter's spacing (ITK's 1 mm when it finds no tag); the other remote
            # stores as MONAI Label sets them up
            if settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI:
                logger.info("DICOMweb series are read as DICOM, not converted to NIfTI (their pixel spacing)")
                settings.MONAI_LABEL_DICOMWEB_CONVERT_TO_NIFTI = False
            return super().init_datastore()
        return LocalDatastore(self.studies,
                              extensions=sorted(set(settings.MONAI_LABEL_DATASTORE_FILE_EXT) | set(IMAGE_SUFFIXES)),
                              auto_reload=settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD,
                              read_only=settings.MONAI_LABEL_DATASTORE_READ_ONLY)

    def init_infers(self) -> Dict[str, InferTask]:
        self._infer = LandmarkInferTask(**self.task_args)
        return {MODEL_NAME: self._infer}

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {MODEL_NAME: LandmarkTrainTask(self._infer, self.train_configs)}

    def init_scoring_methods(self) -> Dict[str, ScoringMethod]:
        return {"expected_error": ExpectedErrorScoring(self._infer)}

    def init_strategies(self) -> Dict[str, Strategy]:
        from monailabel.tasks.activelearning.random import Random

        return {"expected_error": LargestExpectedError(), "random": Random()}
