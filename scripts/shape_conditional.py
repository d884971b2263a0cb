"""How well the other 18 landmarks place each one: the ceiling of any shape-based correction of the pass's misses.

For each landmark, every annotated shape is aligned (similarity) to the mean shape by the *other* landmarks alone,
and a ridge regression predicts the landmark from them (the conditional shape model of an active shape model with
all modes). Scored by cross-validation over the data list's images (folds as the bundle's, ``bundle.io.n_cv_folds``),
against the mean shape's own prediction (what ``bundle.shape`` uses). Only annotations are read; no model.

    python scripts/shape_conditional.py --dataset_dir ../shared/data/isbi2015 --out docs/results/shape_conditional_cv.json

Prints and writes JSON: per landmark, the mean distance (mm) of the prediction from the annotation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle import ISBI_LANDMARK_NAMES  # noqa: E402
from bundle.io import annotated_positions_mm, isbi_datalist, n_cv_folds  # noqa: E402
from bundle.shape import similarity_transform  # noqa: E402


def conditional_errors(train: np.ndarray, test: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """``(images, N)`` distances (mm) of each test landmark from its prediction by the others (ridge regression
    fitted on ``train``), and from the mean shape placed by the others; shapes ``(images, N, 2)`` mm."""
    n = train.shape[1]
    ref = train.mean(0)
    cond, mean = np.zeros(test.shape[:2]), np.zeros(test.shape[:2])
    for k in range(n):
        others = [i for i in range(n) if i != k]

        def aligned(shapes: np.ndarray) -> np.ndarray:
            return np.stack([similarity_transform(s[others], ref[others], np.ones(n - 1))(s) for s in shapes])

        a, b = aligned(train), aligned(test)
        x, y = a[:, others].reshape(len(a), -1), a[:, k]
        mx, my = x.mean(0), y.mean(0)
        w = np.linalg.solve((x - mx).T @ (x - mx) + ridge * np.eye(x.shape[1]), (x - mx).T @ (y - my))
        pred = (b[:, others].reshape(len(b), -1) - mx) @ w + my
        cond[:, k] = np.linalg.norm(pred - b[:, k], axis=1)
        mean[:, k] = np.linalg.norm(my - b[:, k], axis=1)
    return cond, mean


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2015"))
    ap.add_argument("--ground_truth", default="senior", choices=["senior", "junior", "mean"])
    ap.add_argument("--ridge", type=float, nargs="+", default=[1.0, 10.0, 100.0, 1000.0])
    ap.add_argument("--out", default=None, help="JSON file to write")
    args = ap.parse_args(argv)
    val_fraction = 0.2
    folds = n_cv_folds(val_fraction)
    per_fold = []
    for fold in range(folds):
        kw = dict(val_fraction=val_fraction, seed=0, fold=fold)
        train = annotated_positions_mm(isbi_datalist(args.dataset_dir, "train", args.ground_truth, **kw))
        val = annotated_positions_mm(isbi_datalist(args.dataset_dir, "val", args.ground_truth, **kw))
        per_fold.append((train, val))
    res: dict = {"command": "python scripts/shape_conditional.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                 "ground_truth": args.ground_truth, "folds": folds, "by_ridge": {}}
    mean_shape = None
    for ridge in args.ridge:
        cond, mean = zip(*(conditional_errors(tr, va, ridge) for tr, va in per_fold))
        cond, mean = np.concatenate(cond), np.concatenate(mean)
        res["by_ridge"][str(ridge)] = {"mean_mm": round(float(cond.mean()), 3),
                                       "per_landmark_mm": dict(zip(ISBI_LANDMARK_NAMES, np.round(cond.mean(0), 2).tolist()))}
        mean_shape = mean
    res["mean_shape"] = {"mean_mm": round(float(mean_shape.mean()), 3),
                         "per_landmark_mm": dict(zip(ISBI_LANDMARK_NAMES, np.round(mean_shape.mean(0), 2).tolist()))}
    res["n_images"] = int(len(mean_shape))
    text = json.dumps(res, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
