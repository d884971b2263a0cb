"""What several test modules share: the settings of a tiny run on synthetic cephalograms, running a workflow, and
reading the landmarks an evaluation or an inference run wrote."""

from __future__ import annotations

import csv
from pathlib import Path

from monai.bundle import ConfigWorkflow

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def tiny_synthetic_run(tmp: Path, n_train: int, **extra) -> dict:
    """Overrides for a run on ``n_train`` (and 2 test) synthetic images in ``tmp/data``, output in ``tmp/run``, at
    64 x 48 with small batches and no worker processes; faces right, bone bright (a network trained for an epoch
    or two is unsure of everything, so ``auto`` could read any image mirrored or inverted)."""
    return {
        "bundle_root": str(ROOT), "synthetic_dir": str(tmp / "data"), "dataset_dir": str(tmp / "data"),
        "synthetic_n_train": n_train, "synthetic_n_test": 2, "output_dir": str(tmp / "run"), "image_size": [64, 48],
        "heatmap_sigma": 1.5, "batch_size": 2, "num_workers": 0, "face": "right", "bone": "bright", **extra,
    }


def run_workflow(workflow_type: str, configs, **overrides) -> ConfigWorkflow:
    """A bundle workflow (``train`` / ``eval`` / ``infer``) of ``configs`` (paths), initialised, run and finalised,
    without a logging file and with the bundle's metadata; the workflow is returned for its parser."""
    wf = ConfigWorkflow(workflow_type=workflow_type, config_file=[str(c) for c in configs], logging_file=False,
                        meta_file=str(CONFIGS / "metadata.json"), **overrides)
    wf.initialize()
    wf.run()
    wf.finalize()
    return wf


def evaluated_positions(eval_dir: Path) -> dict:
    """``{(image, landmark): (x, y)}`` predicted in an evaluation's ``predictions.csv`` (original pixels)."""
    with open(Path(eval_dir) / "predictions.csv") as f:
        return {(r["image"], r["landmark"]): (float(r["x_pred"]), float(r["y_pred"])) for r in csv.DictReader(f)}


def inferred_positions(out_dir: Path) -> dict:
    """The same from an inference run's ``landmarks.csv``."""
    with open(Path(out_dir) / "landmarks.csv") as f:
        return {(r["image"], r["landmark"]): (float(r["x"]), float(r["y"])) for r in csv.DictReader(f)}
