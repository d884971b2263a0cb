"""Where the coarse-to-fine pipeline centres each refinement crop relative to the truth, per image and landmark,
from held-out evaluations of the global pass: the offsets that ``configs/refine.yaml``'s ``crop_real_offsets`` /
``crop_real_fraction`` train the refinement network on (``bundle.refine.LandmarkCropsd``).

    python scripts/real_crop_offsets.py --global runs/s7/cv{0,1,2,3,4}_globshape \\
        --centre_correction runs/s7/bias_fold{0,1,2,3,4}.json --out runs/real_offsets.json

Each ``--global`` folder is one cross-validation fold evaluated with ``--refine False`` (its ``predictions.csv``:
every image's global estimate from a model that did not train on it); ``--centre_correction`` gives, fold by fold,
the correction the pipeline would move the crop centres by (``refine_centre_correction``; its ``global`` entry),
or leave it out for crops at the global estimates. The offset is (estimate - correction) - annotation, (dy, dx) mm,
against the annotation the evaluation used (the senior doctor's, which the refinement trains on).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bundle.bias import load_bias_correction  # noqa: E402
from bundle.metrics import read_prediction_positions  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--global", dest="coarse", nargs="+", required=True, help="global-pass evaluations, one per fold")
    ap.add_argument("--centre_correction", nargs="*", default=None, help="one correction JSON per fold (same order)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    corrections = args.centre_correction or [None] * len(args.coarse)
    if len(corrections) != len(args.coarse):
        ap.error("give one --centre_correction per --global folder")
    offsets, names = {}, None
    for folder, correction in zip(args.coarse, corrections):
        p = read_prediction_positions(folder)
        names = names or p["names"]
        if p["names"] != names:
            ap.error(f"{folder}: other landmarks than {args.coarse[0]}")
        bias = np.zeros((len(names), 2))
        if correction:
            bias = np.asarray(load_bias_correction(correction, names)["global"], dtype=np.float64)  # (x, y) mm
        off_xy = (p["pred_xy_mm"] - bias) - p["true_xy_mm"]
        for image, o in zip(p["images"], off_xy):
            if image in offsets:
                ap.error(f"{image} is in more than one fold's evaluation")
            offsets[image] = np.round(o[:, ::-1], 4).tolist()  # (dy, dx) mm
    radial = np.linalg.norm(np.asarray(list(offsets.values())), axis=-1)
    result = {"frame": "(dy, dx) mm: crop centre minus annotation", "landmark_names": names,
              "fitted_on": {"global": args.coarse, "centre_correction": corrections},
              "n_images": len(offsets), "mean_radial_mm": round(float(radial.mean()), 4), "offsets_mm": offsets}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result) + "\n")
    print(json.dumps({k: result[k] for k in ("n_images", "mean_radial_mm")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
