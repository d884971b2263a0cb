"""Does choosing a test-time option per landmark generalise? Split-half check on evaluation outputs, printed as JSON.

Each ``--option NAME=DIR`` is an evaluation folder (``predictions.csv`` from ``configs/evaluate.yaml``) of the same
images with one setting (e.g. the global pass alone, the refinement alone, fused with weight 0.5 ...). The script
picks, for every landmark, the option with the lowest mean error on a random half of the images and scores that
choice on the other half, against the ``--baseline`` option on the same half; repeated over ``--repeats`` random
halvings. A per-landmark choice is worth building only when the held-out gain is clearly above zero.

    python scripts/choice_split_half.py --baseline refined --option global=runs/evals/val_global \\
        --option refined=runs/evals/val_refined --option fused1=runs/evals/val_fused1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.metrics import read_prediction_errors  # noqa: E402


def load_errors(folder: str) -> dict[tuple[str, int], float]:
    try:
        return read_prediction_errors(folder)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--option", action="append", required=True, metavar="NAME=DIR", help="an evaluation folder")
    ap.add_argument("--baseline", required=True, help="the NAME of the option used without a per-landmark choice")
    ap.add_argument("--repeats", type=int, default=200, help="random halvings")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    options = dict(o.split("=", 1) for o in args.option)
    if args.baseline not in options:
        raise SystemExit(f"--baseline {args.baseline!r} is not one of the options {sorted(options)}")
    errors = {name: load_errors(folder) for name, folder in options.items()}
    keys = set(errors[args.baseline])
    for name, e in errors.items():
        if set(e) != keys:
            raise SystemExit(f"{options[name]}: not the same images and landmarks as {options[args.baseline]}")
    images = sorted({i for i, _ in keys})
    landmarks = sorted({lm for _, lm in keys})
    names = list(options)
    # E[o, i, l]: error of option o on image i, landmark l
    E = np.array([[[errors[o][(i, lm)] for lm in landmarks] for i in images] for o in names])
    base = names.index(args.baseline)
    in_sample = E.mean(1).min(0).mean()
    rng = np.random.default_rng(args.seed)
    gains = []
    for _ in range(args.repeats):
        perm = rng.permutation(len(images))
        a, b = perm[: len(images) // 2], perm[len(images) // 2:]
        pick = E[:, a].mean(1).argmin(0)  # per landmark, the best option on half a
        chosen = E[pick, :, np.arange(len(landmarks))][:, b].mean()
        gains.append(E[base][b].mean() - chosen)
    report = {
        "images": len(images),
        "landmarks": len(landmarks),
        "options": options,
        "baseline": args.baseline,
        "mre_mm": {o: round(float(E[k].mean()), 4) for k, o in enumerate(names)},
        "per_landmark_best_in_sample_mre_mm": round(float(in_sample), 4),
        "in_sample_choice": {str(lm): names[int(k)] for lm, k in zip(landmarks, E.mean(1).argmin(0))},
        "held_out_gain_mm": {"mean": round(float(np.mean(gains)), 4), "sd": round(float(np.std(gains)), 4),
                             "repeats": args.repeats},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
