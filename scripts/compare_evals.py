"""Compare two evaluations of the same images, paired per image: is B really better than A, or is it noise?

    python scripts/compare_evals.py runs/A/eval_val runs/B/eval_val [--json out.json]

Each argument is an evaluation directory written by ``configs/evaluate.yaml`` (its ``predictions.csv``). For every
image the mean radial error over the landmarks is taken in both, and the per-image differences B - A give the mean
difference with its standard error (and a 95% interval, normal approximation); the same per landmark. A difference
within about two standard errors of zero is not a difference the images can tell apart: on 30 validation images
the SE of an MRE difference is typically 0.02-0.04 mm. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.metrics import read_prediction_errors  # noqa: E402


def read_errors(eval_dir: str) -> dict[tuple[str, int], float]:
    try:
        return read_prediction_errors(eval_dir)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None


def paired(diffs: list[float]) -> dict:
    """Mean, standard error and 95% interval (normal approximation) of paired differences."""
    n = len(diffs)
    mean = sum(diffs) / n
    se = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1) / n) if n > 1 else float("nan")
    return {"n": n, "mean_diff_mm": round(mean, 4), "se_mm": round(se, 4),
            "ci95_mm": [round(mean - 1.96 * se, 4), round(mean + 1.96 * se, 4)]}


def compare(dir_a: str, dir_b: str) -> dict:
    a, b = read_errors(dir_a), read_errors(dir_b)
    common = sorted(set(a) & set(b))
    if not common:
        raise SystemExit(f"{dir_a} and {dir_b} share no (image, landmark) pairs: were they evaluated on the same split?")
    by_image, by_landmark = defaultdict(list), defaultdict(list)
    for k in common:  # k = (image, landmark)
        by_image[k[0]].append(b[k] - a[k])
        by_landmark[k[1]].append(b[k] - a[k])
    per_image = [sum(v) / len(v) for v in by_image.values()]
    result = {
        "a": str(dir_a), "b": str(dir_b),
        "mre_a_mm": round(sum(a[k] for k in common) / len(common), 4),
        "mre_b_mm": round(sum(b[k] for k in common) / len(common), 4),
        "b_minus_a_per_image": paired(per_image),
        "only_in_one": len(set(a) ^ set(b)),
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
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)
    result = compare(args.a, args.b)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
