"""Fit the uncertainty calibration (``error = a * spread + b_l``) over one or more evaluation directories pooled,
e.g. the validation folds of a whole-pipeline cross-validation, and print the JSON that ``configs/evaluate.yaml``
writes as ``calibration.json`` for a single evaluation. The shipped weights are refitted on every Train image, so
their calibration comes from the cross-validation folds (each image evaluated by models that never trained on it):

    python scripts/fit_calibration.py runs/cv/fold0_pipe runs/cv/fold1_pipe ... [--json out.json]

Put ``uncertainty_calibration`` into ``refine_calibration`` (evaluations with ``--refine true``) or
``uncertainty_calibration`` (the global pass alone) of ``configs/inference.yaml``. With ``--check CALIBRATION``
nothing is fitted: that calibration (a ``calibration.json``) is tested on the evaluations instead (e.g. Test1):

    python scripts/fit_calibration.py runs/shipped/eval_test --check docs/results/calibration_cv_refined_centre.json \
        --floor_mm 0.2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.metrics import calibration_from_evaluations, check_calibration  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("eval_dirs", nargs="+", help="evaluation directories (each with predictions.csv)")
    ap.add_argument("--json", help="also write the result here")
    ap.add_argument("--check", help="a calibration.json to test on the evaluations instead of fitting one")
    ap.add_argument("--floor_mm", type=float, default=0.0, help="with --check: the floor of the expected error "
                    "(one pixel of the decoding grid: 0.2 mm for the refinement pass)")
    args = ap.parse_args(argv)
    try:
        if args.check:
            result = check_calibration(args.check, args.eval_dirs, args.floor_mm)
        else:
            result = calibration_from_evaluations(args.eval_dirs)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(str(e)) from None
    result["eval_dirs"] = args.eval_dirs
    text = json.dumps(result, indent=1)
    if args.json:
        Path(args.json).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
