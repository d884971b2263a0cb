"""k-fold cross-validation over ISBI Train: one training per fold (``--val_fold k``, the folds of
``round(1 / val_fraction)``: 5 by default, fold 0 = every other run's validation images), then each fold's best
validation metrics and their mean, SD and standard error as JSON. With ``--compare OTHER`` it adds the paired
per-fold difference against another cross-validation's folder (the way to choose between two recipes: the
folds' validation images differ, the pairing removes that).

    python scripts/cross_validate.py --out runs/cv/refine \\
        --config_file "['configs/train.yaml','configs/refine.yaml']" \\
        -- --dataset_dir ../shared/data/isbi2015 --seed 1 --split_seed 0
    python scripts/cross_validate.py --out runs/cv/refine_drop --config_file ... --compare runs/cv/refine \\
        -- --dataset_dir ../shared/data/isbi2015 --seed 1 --split_seed 0 --network_def#dropout 0.2

Overrides after ``--`` go to every fold's ``python -m monai.bundle run training``. A fold whose ``done`` file
exists is kept; a killed fold resumes from its last checkpoint when the script runs again. ``--folds 1 2`` runs
some folds only (the JSON covers the folds that are done). Writes OUT/fold_K/ (weights, logs, learning curve)
and OUT/cv.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bundle.metrics import mean_and_se  # noqa: E402


def fold_best(fold_dir: Path, key: str) -> dict | None:
    """The best validation point of one fold's learning curve (lowest ``key``), or None if there is none."""
    curve_path = fold_dir / "learning_curve.json"
    if not (fold_dir / "done").is_file() or not curve_path.is_file():
        return None
    curve = json.loads(curve_path.read_text())
    if not curve:
        return None
    return min(curve, key=lambda p: p[key])


def collect(out: Path, n_folds: int, key: str) -> dict:
    folds = {k: fold_best(out / f"fold_{k}", key) for k in range(n_folds)}
    done = {k: v for k, v in folds.items() if v is not None}
    metrics = sorted({m for v in done.values() for m in v if m.startswith("val_")})
    return {
        "folds": {str(k): v for k, v in folds.items()},
        "summary": {m: mean_and_se([v[m] for v in done.values()]) for m in metrics},
    }


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, overrides = argv[:i], argv[i + 1 :]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="folder of the folds and cv.json")
    ap.add_argument("--config_file", required=True, help="the training's config list, as for monai.bundle run")
    ap.add_argument("--n_folds", type=int, default=5, help="folds: round(1 / val_fraction) of the configs (5 for 0.2)")
    ap.add_argument("--folds", type=int, nargs="+", default=None, help="folds to run now (default: all)")
    ap.add_argument("--metric", default="val_mre", help="learning-curve key whose lowest value is a fold's best")
    ap.add_argument("--compare", default=None, help="another cross-validation folder: paired per-fold difference")
    ap.add_argument("--dry_run", action="store_true", help="print the commands, train nothing")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if any(o.startswith("--val_fold") or o.startswith("--output_dir") for o in overrides):
        ap.error("--val_fold and --output_dir are set per fold by this script")
    fraction = f"{1.0 / args.n_folds:.10g}"
    for k in args.folds if args.folds is not None else range(args.n_folds):
        if not 0 <= k < args.n_folds:
            ap.error(f"fold {k} is outside [0, {args.n_folds})")
        fold_dir = out / f"fold_{k}"
        if (fold_dir / "done").is_file():
            print(f"fold {k}: already trained ({fold_dir / 'done'})", flush=True)
            continue
        resume = (fold_dir / "checkpoint_last.pt").is_file()
        cmd = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", args.config_file,
               *overrides, "--val_fraction", fraction, "--val_fold", str(k), "--output_dir", str(fold_dir),
               "--progress_bar", "False", "--resume", str(resume)]
        print(f"fold {k}: {' '.join(cmd)}", flush=True)
        if args.dry_run:
            continue
        fold_dir.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with open(out / f"fold_{k}.log", "a") as log:
            rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            print(f"fold {k}: training failed (exit code {rc}); see {out / f'fold_{k}.log'}", file=sys.stderr)
            return rc
        (fold_dir / "done").write_text(f"{time.perf_counter() - start:.1f}\n")
    result = {"config_file": args.config_file, "overrides": overrides, "n_folds": args.n_folds,
              **collect(out, args.n_folds, args.metric)}
    if args.compare:
        other = collect(Path(args.compare), args.n_folds, args.metric)["folds"]
        pairs = [(k, v[args.metric], other[k][args.metric]) for k, v in result["folds"].items()
                 if v is not None and other.get(k) is not None]
        result["compare"] = {"other": args.compare, "folds": [k for k, _, _ in pairs],
                             f"{args.metric}_minus_other": mean_and_se([a - b for _, a, b in pairs])}
    (out / "cv.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: result[k] for k in ("summary", "compare") if k in result}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
