"""Can the global pass tell which way a face looks? For each validation image of each cross-validation fold, the
fold's global model reads the image as it is (the face looks right, as in ISBI) and mirrored (as a radiograph
taken or exported the other way round would be); for each reading the mean heatmap spread
(``bundle.orientation.mean_spread_mm``) and the global error (the mirrored reading mapped back) are recorded.
Prints JSON: both distributions, and for each threshold how ``--face auto`` (``OrientFaced``) would do: how often an
image facing right is read a second time (it costs one global pass) or wrongly mirrored, and how often one facing
left is not caught.

    python scripts/face_orientation.py --ckpt runs/s6/shipped_model.pt runs/gpu_1127c/f1_last_fp16.pt ... \\
        --out docs/results/face_orientation_cv.json     (one global checkpoint per fold, fold 0 first)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from monai.bundle import ConfigParser  # noqa: E402

from bundle.engine import load_weights  # noqa: E402
from bundle.orientation import mean_spread_mm  # noqa: E402

CONFIGS = ["train.yaml", "isbi_gpu.yaml", "maht_net.yaml", "evaluate.yaml"]


def fold_rows(ckpt: str, fold: int, dataset_dir: str, limit: int | None) -> list[list[float]]:
    """Per image: spread as read, spread mirrored, global MRE as read, global MRE mirrored (mm)."""
    p = ConfigParser()
    p.read_config([str(ROOT / "configs" / c) for c in CONFIGS])
    p.update({"bundle_root": str(ROOT), "dataset_dir": dataset_dir, "refine": False, "eval_split": "val",
              "val_fold": fold, "shape_model": None, "ckpt_path": ckpt})
    pre, items = p.get_parsed_content("validate#preprocessing"), p.get_parsed_content("validate#datalist")[:limit]
    net, inferer, decode = p.get_parsed_content("network"), p.get_parsed_content("validate#inferer"), p.get_parsed_content("decode")
    load_weights(net, ckpt).eval()
    rows = []
    for item in items:
        d = pre(item)
        row_spread, row_error = [], []
        for mirrored in (False, True):
            image = torch.flip(d["image"], [-1]) if mirrored else d["image"]
            with torch.no_grad():
                out = inferer(image[None], net)
            logits = (out if isinstance(out, torch.Tensor) else out[0])[0].float()
            row_spread.append(mean_spread_mm(logits, d["scale"], d["spacing"]))
            pred = decode({**d, "pred": logits})
            pred_mm = pred["pred_mm"].float().clone()
            if mirrored:  # back into the image as it is
                pred_mm[:, 1] = (float(d["orig_size"][1]) - 1) * float(d["spacing"][1]) - pred_mm[:, 1]
            row_error.append(float((pred_mm - pred["true_mm"].float()).norm(dim=1).mean()))
        rows.append(row_spread + row_error)
    return rows


def summary(x: np.ndarray) -> dict:
    return {"min": round(float(x.min()), 3), "p50": round(float(np.median(x)), 3), "p99": round(float(np.percentile(x, 99)), 3),
            "max": round(float(x.max()), 3)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", nargs="+", required=True, help="one global checkpoint per fold, fold 0 first")
    ap.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2015"))
    ap.add_argument("--thresholds_mm", type=float, nargs="+", default=[1.0, 1.5, 2.0, 2.5, 3.0])
    ap.add_argument("--limit", type=int, default=None, help="validation images per fold")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    rows = []
    for k, ckpt in enumerate(args.ckpt):
        rows += fold_rows(ckpt, k, args.dataset_dir, args.limit)
        print(f"fold {k}: {len(rows)} images", file=sys.stderr, flush=True)
    r = np.asarray(rows)
    s_right, s_left, e_right, e_left = r.T  # "left": the mirrored image, a face looking left read as it is
    result = {"command": "python scripts/face_orientation.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "n_images": len(r),
              "facing_right_as_read": {"spread_mm": summary(s_right), "global_mre_mm": round(float(e_right.mean()), 3)},
              "facing_left_as_read": {"spread_mm": summary(s_left), "global_mre_mm": round(float(e_left.mean()), 3)},
              "smaller_spread_picks_the_right_way_pct": round(100 * float((s_right < s_left).mean()), 2),
              "auto_by_threshold": []}
    for t in args.thresholds_mm:
        result["auto_by_threshold"].append({
            "auto_spread_mm": t,
            "facing_right_read_twice_pct": round(100 * float((s_right > t).mean()), 2),
            "facing_right_wrongly_mirrored": int(((s_right > t) & (s_left < s_right)).sum()),
            "facing_left_missed": int(((s_left <= t) | (s_right >= s_left)).sum())})
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
