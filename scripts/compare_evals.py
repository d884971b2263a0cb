"""Compare two evaluations of the same images, paired per image: is B really better than A, or is it noise?

    python scripts/compare_evals.py runs/A/eval_val runs/B/eval_val [--json out.json]
    python scripts/compare_evals.py A_fold0 B_fold0 A_fold1 B_fold1 ...   # several pairs (folds), pooled

Each argument is an evaluation directory written by ``configs/evaluate.yaml`` (its ``predictions.csv``). For every
image the mean radial error over the landmarks is taken in both, and the per-image differences B - A give the mean
difference with its standard error (and a 95% interval, normal approximation); the same per landmark. A difference
within about two standard errors of zero is not a difference the images can tell apart: on 30 validation images
the SE of an MRE difference is typically 0.02-0.04 mm. More than one pair of directories (e.g. the validation
folds of a cross-validation, each pair on its own images) pools every pair's images into one comparison. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.metrics import mean_and_se, read_prediction_errors  # noqa: E402


def read_errors(eval_dir: str) -> dict[tuple[str, int], float]:
    try:
        return read_prediction_errors(eval_dir)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None


def paired(diffs: list[float]) -> dict:
    """Mean, standard error and 95% interval (normal approximation) of paired differences."""
    s = mean_and_se(diffs)
    return {"n": s["n"], "mean_diff_mm": s["mean"], "se_mm": s["se"],
            "ci95_mm": [round(s["mean"] - 1.96 * s["se"], 4), round(s["mean"] + 1.96 * s["se"], 4)]}


def compare(dir_a: str, dir_b: str, *more: str) -> dict:
    """B - A over ``(dir_a, dir_b)`` and any further pairs of directories in ``more``, images pooled."""
    if len(more) % 2:
        raise SystemExit("directories come in pairs: A B [A2 B2 ...]")
    pairs = [(dir_a, dir_b)] + [(more[i], more[i + 1]) for i in range(0, len(more), 2)]
    a, b = {}, {}
    only_in_one = 0
    for i, (da, db) in enumerate(pairs):
        ea, eb = read_errors(da), read_errors(db)
        common = set(ea) & set(eb)
        if not common:
            raise SystemExit(f"{da} and {db} share no (image, landmark) pairs: were they evaluated on the same split?")
        only_in_one += len(set(ea) ^ set(eb))
        a.update({(i, *k): ea[k] for k in common})  # k = (image, landmark); i keeps the pairs' images apart
        b.update({(i, *k): eb[k] for k in common})
    by_image, by_landmark = defaultdict(list), defaultdict(list)
    for k in sorted(a):  # k = (pair, image, landmark)
        by_image[k[:2]].append(b[k] - a[k])
        by_landmark[k[2]].append(b[k] - a[k])
    per_image = [sum(v) / len(v) for v in by_image.values()]
    result = {
        "a": str(dir_a) if not more else [p[0] for p in pairs],
        "b": str(dir_b) if not more else [p[1] for p in pairs],
        "mre_a_mm": round(sum(a.values()) / len(a), 4),
        "mre_b_mm": round(sum(b.values()) / len(b), 4),
        "b_minus_a_per_image": paired(per_image),
        "only_in_one": only_in_one,
        "per_landmark": {},
    }
    result["b_better"] = result["b_minus_a_per_image"]["ci95_mm"][1] < 0
    result["a_better"] = result["b_minus_a_per_image"]["ci95_mm"][0] > 0
    for lm in sorted(by_landmark):
        result["per_landmark"][str(lm)] = paired(by_landmark[lm])
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", help="evaluation directory A (the baseline)")
    parser.add_argument("b", help="evaluation directory B")
    parser.add_argument("more", nargs="*", help="further pairs A2 B2 ... (other folds), pooled with the first")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = compare(args.a, args.b, *args.more)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
