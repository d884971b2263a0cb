"""How far the cephalometric analysis (bundle/analysis.py: ANB, SNB, SNA, ODI, APDI, FHI, FMA, MW) of predicted
landmarks is from the ground truth's, as JSON: per measurement the mean absolute difference and the share of images
whose anatomical type agrees (the ISBI 2015 challenge's classification accuracy).

    python scripts/analysis_agreement.py runs/eval_test1                       # an evaluation folder (or several)
    python scripts/analysis_agreement.py --doctors ../shared/data/isbi2015 --split test   # junior against senior

An evaluation folder is one that ``configs/evaluate.yaml`` wrote (its ``predictions.csv``); ``--doctors`` gives the
same table for the junior doctor's annotation against the senior's, the agreement between two experts to read
the model's against.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.analysis import has_analysis_landmarks, measurement_agreement  # noqa: E402
from bundle.io import annotated_positions_mm, isbi_datalist  # noqa: E402
from bundle.metrics import read_prediction_positions  # noqa: E402


def from_evaluation(eval_dir: str) -> dict:
    p = read_prediction_positions(eval_dir)
    if not has_analysis_landmarks(p["names"]):
        raise SystemExit(f"{eval_dir}: the analysis needs the 19 ISBI landmarks in their order, not {p['names']}")
    return measurement_agreement(p["pred_xy_mm"], p["true_xy_mm"])


def between_doctors(dataset_dir: str, split: str) -> dict:
    junior, senior = (annotated_positions_mm(isbi_datalist(dataset_dir, split, doctor)) for doctor in ("junior", "senior"))
    return measurement_agreement(junior, senior)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dirs", nargs="*", help="evaluation folders (configs/evaluate.yaml's eval_dir)")
    ap.add_argument("--doctors", metavar="DATASET_DIR", default=None, help="an ISBI 2015-layout folder: junior vs senior")
    ap.add_argument("--split", default="test", choices=["test", "trainval"], help="with --doctors: Test1 or all of Train")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    if not args.eval_dirs and not args.doctors:
        ap.error("give evaluation folders and/or --doctors DATASET_DIR")
    result = {d: from_evaluation(d) for d in args.eval_dirs}
    if args.doctors:
        result[f"junior vs senior ({args.split})"] = between_doctors(args.doctors, args.split)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
