"""Can the global pass tell how an image should be read? For each validation image of each cross-validation fold,
the fold's global model reads the image as it is (face looking right, bone bright, as in ISBI), mirrored, inverted
(a negative) and both; for each reading the mean decoded heatmap spread (``spread_mm`` of the evaluation's decoding,
shape check included when ``--shape_models`` are given, as ``OrientImaged`` uses it) and the global error (mapped
back into the image) are recorded. An image that looks left, or is a negative, is one of those
readings of an ISBI image, so the same numbers say how ``face: auto`` / ``bone: auto`` (``OrientImaged``) would do
with each kind of image: how often one as ISBI's is read more than once (one global pass each) or read wrongly, and
how often another kind is not read back the right way.

    python scripts/image_orientation.py --ckpt runs/s6/shipped_model.pt runs/gpu_1127c/f1_last_fp16.pt ... \\
        --shape_models runs/s6/shape/fold0.json ... --out docs/results/image_orientation_cv.json
    (one global checkpoint and shape model per fold, fold 0 first)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bundle.orientation import READINGS, RestoreOrientationd, describe, orient  # noqa: E402
from global_modes import global_pass  # noqa: E402  (scripts/, beside this one)


def fold_rows(ckpt: str, fold: int, dataset_dir: str, shape_model: str | None, limit: int | None) -> list[list[float]]:
    """Per image: the mean spread of each reading (READINGS order), then the global MRE of each (mm)."""
    pre, items, read, decode = global_pass(ckpt, fold, dataset_dir, shape_model)
    rows = []
    for item in items[:limit]:
        d = pre(item)
        spreads, errors = [], []
        for mirrored, inverted in READINGS:
            out = decode({**d, "pred": read(orient(d["image"], mirrored, inverted))})  # as OrientImaged decodes it
            spreads.append(float(out["spread_mm"].mean()))
            back = RestoreOrientationd(image_keys=())({**out, "mirrored": mirrored})  # into the image as it is
            errors.append(float((back["pred_mm"].float() - out["true_mm"].float()).norm(dim=1).mean()))
        rows.append(spreads + errors)
    return rows


def summary(x: np.ndarray) -> dict:
    return {"min": round(float(x.min()), 3), "p50": round(float(np.median(x)), 3), "p99": round(float(np.percentile(x, 99)), 3),
            "max": round(float(x.max()), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", nargs="+", required=True, help="one global checkpoint per fold, fold 0 first")
    ap.add_argument("--shape_models", nargs="*", default=None, help="one shape model per fold, as the pipeline's shape check")
    ap.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2015"))
    ap.add_argument("--thresholds_mm", type=float, nargs="+", default=[5.0, 10.0, 15.0, 20.0])
    ap.add_argument("--limit", type=int, default=None, help="validation images per fold")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    shapes = args.shape_models or [None] * len(args.ckpt)
    if len(shapes) != len(args.ckpt):
        ap.error("give one shape model per checkpoint")
    rows = []
    for k, (ckpt, shape) in enumerate(zip(args.ckpt, shapes)):
        rows += fold_rows(ckpt, k, args.dataset_dir, shape, args.limit)
        print(f"fold {k}: {len(rows)} images", file=sys.stderr, flush=True)
    r = np.asarray(rows)
    spread, error = r[:, :4], r[:, 4:]
    result = {"command": "python scripts/image_orientation.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "n_images": len(r), "readings_of_the_isbi_images": {}, "auto_both_face_and_bone": []}
    for j, reading in enumerate(READINGS):
        result["readings_of_the_isbi_images"][describe(reading)] = {
            "spread_mm": summary(spread[:, j]), "global_mre_mm": round(float(error[:, j].mean()), 3)}
    result["smallest_spread_is_as_it_is_pct"] = round(100 * float((spread.argmin(1) == 0).mean()), 2)
    # an image in state s (READINGS[s]) read by candidate c gives the ISBI image's reading s xor c
    for t in args.thresholds_mm:
        row = {"auto_spread_mm": t}
        for s, state in enumerate(READINGS):
            as_read = spread[:, s]
            unsure = as_read > t
            # with both auto every reading is a candidate: the surest wins, which is right iff it is the ISBI image's own
            right = np.where(unsure, spread.argmin(1) == 0, s == 0)
            row[f"images_{describe(state).replace(' ', '_')}"] = {
                "read_more_than_once_pct": round(100 * float(unsure.mean()), 2),
                "read_wrongly": int((~right).sum())}
        result["auto_both_face_and_bone"].append(row)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
