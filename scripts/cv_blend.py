"""Would a per-landmark blend of the global and the refined position beat the refined one? Leave-one-fold-out over
cross-validation folds: for each fold, per-landmark weights ``w`` (final = ``w * refined + (1 - w) * global``, on a
0.1 grid) are fitted on the other folds' predictions and applied to it; prints the pooled paired difference as JSON,
with the refined error tabulated by how far off the global estimate was (where the pipeline's error comes from).

    python scripts/cv_blend.py --refined runs/s6/cv{0,1,2,3,4}_shape --global runs/s7/cv{0,1,2,3,4}_globshape

Each ``--refined`` folder is an evaluation with ``--refine true``, its ``--global`` partner the same fold evaluated
with ``--refine False`` (same global model and shape model), both written by ``configs/evaluate.yaml``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.metrics import mean_and_se, read_prediction_positions  # noqa: E402

GRID = np.round(np.arange(0.0, 1.01, 0.1), 1)
BINS_MM = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 10.0, np.inf)  # the global estimate's radial error, for the table of the tail


def fit_weights(refined: np.ndarray, coarse: np.ndarray, true: np.ndarray) -> np.ndarray:
    """Per landmark, the grid weight of the refined position with the lowest mean radial error."""
    errors = [np.linalg.norm(w * refined + (1 - w) * coarse - true, axis=-1).mean(0) for w in GRID]  # (grid, N)
    return GRID[np.argmin(np.stack(errors), axis=0)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--refined", nargs="+", required=True, help="one evaluation folder per fold, both passes")
    ap.add_argument("--global", dest="coarse", nargs="+", required=True, help="the same folds, global pass only")
    args = ap.parse_args(argv)
    if len(args.refined) != len(args.coarse) or len(args.refined) < 2:
        ap.error("give the same number (at least 2) of --refined and --global folders, fold by fold")
    folds = []
    for r_dir, g_dir in zip(args.refined, args.coarse):
        r, g = read_prediction_positions(r_dir), read_prediction_positions(g_dir)
        if r["images"] != g["images"] or not np.allclose(r["true_xy"], g["true_xy"], atol=1e-2):
            ap.error(f"{r_dir} and {g_dir} are not the same images and annotations")
        s = r["spacing_mm"]
        folds.append((r["pred_xy"] * s, g["pred_xy"] * s, r["true_xy"] * s))
    diffs, per_fold = [], []
    for k, (r, g, t) in enumerate(folds):
        rest = [folds[i] for i in range(len(folds)) if i != k]
        w = fit_weights(*(np.concatenate([f[j] for f in rest]) for j in range(3)))
        before = np.linalg.norm(r - t, axis=-1).mean(1)
        after = np.linalg.norm(w[None, :, None] * r + (1 - w[None, :, None]) * g - t, axis=-1).mean(1)
        diffs.append(after - before)
        per_fold.append({"fold": args.refined[k], "weights": w.tolist(), "refined_mre": round(float(before.mean()), 4),
                         "blend_mre": round(float(after.mean()), 4)})
    d = np.concatenate(diffs)
    r_all, g_all, t_all = (np.concatenate([f[j] for f in folds]) for j in range(3))
    final, coarse = np.linalg.norm(r_all - t_all, axis=-1), np.linalg.norm(g_all - t_all, axis=-1)
    by_global = []
    for lo, hi in zip(BINS_MM[:-1], BINS_MM[1:]):
        m = (coarse >= lo) & (coarse < hi)
        if m.any():
            by_global.append({"global_error_mm": [lo, hi if np.isfinite(hi) else None], "share_pct": round(100 * float(m.mean()), 1),
                              "global_mre_mm": round(float(coarse[m].mean()), 2),
                              "final_mre_mm": round(float(final[m].mean()), 2),
                              "adds_to_mre_mm": round(float(final[m].sum() / final.size), 3)})
    s = mean_and_se(d.tolist())
    result = {
        "n_images": int(len(d)),
        "refined_mre": round(float(np.mean([f["refined_mre"] for f in per_fold])), 4),
        "blend_minus_refined_per_image": {"mean_mm": s["mean"], "se_mm": s["se"]},
        "weights_all_folds": fit_weights(r_all, g_all, t_all).tolist(),
        "folds": per_fold,
        "refined_error_by_global_error": by_global,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
