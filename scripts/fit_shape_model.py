"""Fit the shape model of the global pass's shape check (bundle/shape.py) from training annotations and write it
as JSON: the Procrustes mean of the landmarks (mm) and each landmark's RMS distance from it.

    python scripts/fit_shape_model.py --dataset_dir ../shared/data/isbi2015 --out models/shape_model.json
    python scripts/fit_shape_model.py --dataset_dir ... --split train --val_fold 2 --out runs/cv/shape_fold2.json

``--split trainval`` (the default) uses every Train image, as the shipped weights do; ``--split train`` with
``--val_fold K`` only the training part of cross-validation fold K, so that fold's validation stays unseen.
Evaluation and inference use it with ``--shape_model PATH``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.io import isbi_datalist, read_landmarks  # noqa: E402
from bundle.shape import fit_shape_model  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", required=True, help="an ISBI 2015-layout folder")
    ap.add_argument("--out", required=True, help="the JSON file to write")
    ap.add_argument("--split", default="trainval", choices=["trainval", "train"])
    ap.add_argument("--val_fold", type=int, default=None, help="cross-validation fold held out (with --split train)")
    ap.add_argument("--ground_truth", default="mean", choices=["mean", "senior", "junior"])
    ap.add_argument("--val_fraction", type=float, default=0.2)
    ap.add_argument("--split_seed", type=int, default=0)
    ap.add_argument("--n_landmarks", type=int, default=19)
    args = ap.parse_args(argv)
    items = isbi_datalist(args.dataset_dir, args.split, args.ground_truth, args.val_fraction, args.split_seed,
                          None, args.val_fold)
    shapes = []
    for item in items:
        xy = np.mean([read_landmarks(f, args.n_landmarks) for f in item["label_files"]], axis=0)
        shapes.append(xy * item["spacing_mm"])  # (y, x) mm, the frame of the decoded landmarks
    model = fit_shape_model(shapes)
    model.update({"dataset_dir": str(args.dataset_dir), "split": args.split, "val_fold": args.val_fold,
                  "ground_truth": args.ground_truth, "frame": "(y, x) mm"})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(model, indent=1) + "\n")
    print(json.dumps({k: v for k, v in model.items() if k != "mean"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
