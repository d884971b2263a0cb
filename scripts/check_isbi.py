"""End-to-end check of the shipped model on ISBI 2015 Test1 images, through the inference bundle as a user runs it.

Runs configs/inference.yaml on the first ``--n`` Test1 images (copied to a temporary input folder), reads the
``landmarks.csv`` it writes and compares it with the senior doctor's annotation (and the cephalometric analysis of
the predictions with the annotation's: the share of measurement types that agree). Prints JSON; exits non-zero if
the inference failed, a Slicer, overlay, ``measurements.csv``, ``checks.csv``, ``readings.csv`` or ``report.html``
output is missing, or the MRE exceeds ``--max_mre``; lists the images inference asks to check and those it did not
read as they are (ISBI's own images: none). Skips (exit 0) when the data set is not there.

    python scripts/check_isbi.py --dataset_dir ../shared/data/isbi2015 --n 10
    python scripts/check_isbi.py --n 10 --runtime openvino    # both networks run by OpenVINO
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.analysis import measurement_agreement  # noqa: E402
from bundle.io import ISBI_SPACING_MM, image_stem, read_isbi_landmarks  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2015"))
    ap.add_argument("--n", type=int, default=10, help="Test1 images to run")
    ap.add_argument("--max_mre", type=float, default=3.0, help="fail above this MRE (mm)")
    ap.add_argument("--config_file", default="configs/inference.yaml")
    ap.add_argument("--runtime", default="pytorch", choices=["pytorch", "openvino"],
                    help="the networks' runtime (openvino: pip install -r requirements-openvino.txt)")
    args = ap.parse_args()
    test_dir = Path(args.dataset_dir) / "RawImage" / "Test1Data"
    if not test_dir.is_dir():
        print(json.dumps({"skipped": f"{test_dir} not found"}))
        return 0
    images = sorted(test_dir.iterdir())[: args.n]
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = Path(tmp) / "in", Path(tmp) / "out"
        inp.mkdir()
        for p in images:
            shutil.copy(p, inp / p.name)
        t0 = time.perf_counter()
        res = subprocess.run(
            [sys.executable, "-m", "monai.bundle", "run", "--config_file", args.config_file,
             "--input_dir", str(inp), "--output_dir", str(out), "--runtime", args.runtime],
            cwd=ROOT, capture_output=True, text=True,
        )
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            print(res.stdout[-2000:], res.stderr[-2000:], file=sys.stderr)
            return 1
        with open(out / "landmarks.csv") as f:
            rows = list(csv.DictReader(f))
        errors, preds_mm, truths_mm = [], [], []
        for p in images:
            stem = p.name.split(".")[0]
            truth_yx = read_isbi_landmarks(Path(args.dataset_dir) / "AnnotationsByMD" / "400_senior" / f"{stem}.txt")
            pred = sorted((r for r in rows if r["image"] == p.name), key=lambda r: int(r["landmark"]))
            pred_xy = np.array([[float(r["x"]), float(r["y"])] for r in pred])
            errors.append(np.linalg.norm(pred_xy - truth_yx[:, ::-1], axis=1) * ISBI_SPACING_MM)
            preds_mm.append(pred_xy * ISBI_SPACING_MM)
            truths_mm.append(truth_yx[:, ::-1] * ISBI_SPACING_MM)
        errors = np.stack(errors)
        outputs_ok = all((out / f"{image_stem(p.name)}.mrk.json").is_file() and
                         (out / f"{image_stem(p.name)}_overlay.png").is_file() for p in images)
        with open(out / "measurements.csv") as f:  # the analysis inference wrote, against the senior's
            written = list(csv.DictReader(f))
        outputs_ok = outputs_ok and len(written) == 8 * len(images) and (out / "report.html").is_file()
        listed = {}
        for name in ("checks.csv", "readings.csv"):  # the images to check, the images not read as they are
            outputs_ok = outputs_ok and (out / name).is_file()
            if (out / name).is_file():
                with open(out / name) as f:
                    listed[name] = sorted({r["image"] for r in csv.DictReader(f)})
        agreement = measurement_agreement(np.stack(preds_mm), np.stack(truths_mm))
    report = {
        "images": len(images),
        "config_file": args.config_file,
        "runtime": args.runtime,
        "mre_mm": round(float(errors.mean()), 3),
        "sdr_2mm": round(100 * float((errors <= 2.0).mean()), 1),
        "analysis_type_agreement_pct": agreement["mean_type_agreement_pct"],
        "slicer_overlay_analysis_and_report_files": outputs_ok,
        "images_to_check": listed.get("checks.csv"),
        "images_not_read_as_they_are": listed.get("readings.csv"),
        "wall_seconds_including_start_up": round(seconds, 1),
    }
    print(json.dumps(report, indent=2))
    return 0 if outputs_ok and report["mre_mm"] <= args.max_mre else 1


if __name__ == "__main__":
    sys.exit(main())
