"""Fit the per-landmark bias correction (bundle/bias.py) from held-out evaluations and write it as JSON; report its
leave-one-fold-out effect.

    python scripts/fit_bias_correction.py --refined runs/s6/cv{0,1,2,3,4}_shape \\
        --global runs/s7/cv{0,1,2,3,4}_globshape --out models/bias_correction.json

Each ``--refined`` folder is one cross-validation fold evaluated with both passes (``configs/evaluate.yaml``, its
``predictions.csv``), each ``--global`` folder the same fold with ``--refine False``; either list may be left out.
The correction of an entry is the mean residual (prediction minus annotation, x / y mm) over all folds' images
pooled; ``nested_cv`` says what it does to images it was not fitted on: per fold, the correction of the other folds
subtracted from that fold's predictions, the per-image change of the mean radial error pooled (mean and SE).

Without any model (ISBI layout): the ``global`` entry from the annotations alone, the mean offset of the training
target from the ground truth over the model's training images (``bundle.bias.annotation_bias``), e.g. for a global
model trained on all of Train with the mean of both doctors and evaluated against the senior doctor:

    python scripts/fit_bias_correction.py --annotations ../shared/data/isbi2015 --out runs/mine/centre_correction.json

(``--split train`` with ``--val_fold`` / ``--val_fraction`` / ``--split_seed`` for a model that held out a
validation part, as the CPU recipe's global model does.) It is what ``--refine_centre_correction`` needs: over the
whole-pipeline cross-validation it does what the correction fitted from the model's own predictions does (see
docs/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.bias import annotation_bias, fit_bias  # noqa: E402
from bundle import ISBI_LANDMARK_NAMES  # noqa: E402
from bundle.metrics import mean_and_se, read_prediction_positions  # noqa: E402


def folds_mm(dirs: list[str]) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str]]:
    """Each folder's predicted and annotated positions in mm (x, y), and the landmark names (the same in all)."""
    out, names = [], None
    for d in dirs:
        p = read_prediction_positions(d)
        if names is not None and p["names"] != names:
            raise ValueError(f"{d}: other landmarks than {dirs[0]}")
        names = p["names"]
        out.append((p["pred_xy_mm"], p["true_xy_mm"]))
    return out, names


def nested_cv(folds: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    """Leave-one-fold-out: each fold corrected with the bias of the others; the per-image change of the MRE."""
    diffs, before_all, after_all = [], [], []
    for k, (pred, true) in enumerate(folds):
        rest = [f for i, f in enumerate(folds) if i != k]
        bias = fit_bias(np.concatenate([f[0] for f in rest]), np.concatenate([f[1] for f in rest]))
        before = np.linalg.norm(pred - true, axis=-1).mean(1)
        after = np.linalg.norm(pred - bias - true, axis=-1).mean(1)
        diffs.append(after - before)
        before_all.append(before)
        after_all.append(after)
    s = mean_and_se(np.concatenate(diffs).tolist())
    return {"n_images": s["n"], "mre_mm": round(float(np.concatenate(before_all).mean()), 4),
            "corrected_mre_mm": round(float(np.concatenate(after_all).mean()), 4),
            "corrected_minus_uncorrected_per_image": {"mean_mm": s["mean"], "se_mm": s["se"]}}


FRAME = "(x, y) mm, image axes; subtracted from the predictions"


def write(result: dict, out: str | None) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refined", nargs="*", default=[], help="evaluation folders, both passes, one per fold")
    ap.add_argument("--global", dest="coarse", nargs="*", default=[], help="evaluation folders, global pass alone")
    ap.add_argument("--out", default=None, help="the JSON file to write (default: print only)")
    ap.add_argument("--annotations", metavar="DATASET_DIR", default=None,
                    help="an ISBI 2015-layout folder: the 'global' entry from its annotations, no evaluations needed")
    ap.add_argument("--train_ground_truth", default="mean", choices=["mean", "senior", "junior"],
                    help="with --annotations: what the global model was trained on (train.yaml's ground_truth)")
    ap.add_argument("--ground_truth", default="senior", choices=["mean", "senior", "junior"],
                    help="with --annotations: what it is judged against (evaluate.yaml's eval_ground_truth)")
    ap.add_argument("--split", default="trainval", choices=["trainval", "train", "test"],
                    help="with --annotations: the model's training images, all of Train or its training part (test: "
                    "Test1's offsets, to compare with Train's; never a correction to evaluate Test1 with)")
    ap.add_argument("--val_fold", type=int, default=None, help="with --split train: the fold held out")
    ap.add_argument("--val_fraction", type=float, default=0.2)
    ap.add_argument("--split_seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.annotations:
        if args.refined or args.coarse:
            ap.error("--annotations fits from the annotations alone; leave out --refined / --global")
        bias, n = annotation_bias(args.annotations, args.train_ground_truth, args.ground_truth, args.split,
                                  args.val_fraction, args.split_seed, args.val_fold)
        result = {"frame": FRAME, "global": np.round(bias, 4).tolist(), "landmark_names": list(ISBI_LANDMARK_NAMES), "n_images": n,
                  "fitted_on": {"global": {"annotations": str(args.annotations), "train_ground_truth": args.train_ground_truth,
                                           "ground_truth": args.ground_truth, "split": args.split, "val_fold": args.val_fold,
                                           "val_fraction": args.val_fraction, "split_seed": args.split_seed}}}
        write(result, args.out)
        size = float(np.linalg.norm(bias, axis=-1).mean())
        print(json.dumps({"n_images": n, "mean_offset_mm": round(size, 4), "out": args.out}))
        return 0
    if len(args.refined) < 2 and len(args.coarse) < 2:
        ap.error("give at least two folds' evaluation folders (--refined and/or --global), or --annotations")
    result: dict = {"frame": FRAME, "nested_cv": {}, "fitted_on": {}}
    names = None
    for entry, dirs in (("refined", args.refined), ("global", args.coarse)):
        if not dirs:
            continue
        if len(dirs) < 2:
            ap.error(f"--{entry}: at least two folds")
        folds, entry_names = folds_mm(dirs)
        if names is not None and entry_names != names:
            ap.error("the --refined and --global evaluations have different landmarks")
        names = entry_names
        bias = fit_bias(np.concatenate([f[0] for f in folds]), np.concatenate([f[1] for f in folds]))
        result[entry] = np.round(bias, 4).tolist()
        result["nested_cv"][entry] = nested_cv(folds)
        result["fitted_on"][entry] = list(dirs)
    result["landmark_names"] = names
    result["n_images"] = int(sum(len(f[0]) for f in folds))
    write(result, args.out)
    print(json.dumps({k: v for k, v in result.items() if k in ("nested_cv", "n_images")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
