"""The refinement network's capture range: how much of a known displacement of the crop centre it corrects.

For each validation image, each landmark's crop is centred at a fixed distance from the ground truth in a random
direction (no global model involved), refined as evaluation does (with the shifted crops), and the remaining
radial error averaged, per distance and per landmark. Prints JSON.

    python scripts/capture_range.py --refine_ckpt_path runs/cv/refine/fold_0/model.pt --val_fold 0
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from monai.transforms import ScaleIntensityRangePercentilesd  # noqa: E402

from bundle import ISBI_LANDMARK_NAMES  # noqa: E402
from bundle.io import isbi_datalist  # noqa: E402
from bundle.refine import LandmarkCropNet, RefineLandmarksd, ResampleToSpacingd, refinement_unet  # noqa: E402
from bundle.transforms import LoadCephalogramd  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2015"))
    ap.add_argument("--refine_ckpt_path", required=True)
    ap.add_argument("--val_fold", type=int, default=None, help="cross-validation fold whose validation images to use")
    ap.add_argument("--split_seed", type=int, default=0)
    ap.add_argument("--ground_truth", default="senior")
    ap.add_argument("--distances_mm", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 8])
    ap.add_argument("--context_factor", type=float, default=4.0)
    ap.add_argument("--spacing_mm", type=float, default=0.2, help="the refinement grid")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    net = LandmarkCropNet(refinement_unet(19, context_factor=args.context_factor))
    state = torch.load(args.refine_ckpt_path, map_location="cpu", weights_only=True)
    net.load_state_dict({k: v.float() for k, v in state.get("model", state).items()})
    items = isbi_datalist(args.dataset_dir, "val", args.ground_truth, 0.2, args.split_seed, args.limit, args.val_fold)
    load = LoadCephalogramd(keys="image", n_landmarks=19, spacing_mm=0.1)
    fine = ResampleToSpacingd(keys="image", spacing_mm=args.spacing_mm, output_key="image_fine")
    norm = ScaleIntensityRangePercentilesd(keys="image_fine", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    refine = RefineLandmarksd(net, crop_size=(128, 128), context_factor=args.context_factor, precision="auto",
                              shifts=[[6, 6], [-6, 6], [6, -6], [-6, -6]])
    rng = np.random.default_rng(args.seed)
    errors = {m: [] for m in args.distances_mm}
    for item in items:
        d = norm(fine(load(item)))
        truth, px_mm = d["landmarks"].clone(), float(d["spacing"].mean())
        for m in args.distances_mm:
            angle = rng.uniform(0, 2 * np.pi, len(truth))
            offset = torch.tensor(np.stack([np.sin(angle), np.cos(angle)], 1) * m / px_mm, dtype=torch.float32)
            out = refine({**d, "pred_landmarks": truth + offset, "error": ""})
            errors[m].append(((out["pred_landmarks"] - truth).norm(dim=1) * px_mm).numpy())
        print(f"{Path(item['image']).name}", file=sys.stderr, flush=True)
    result = {
        "refine_ckpt_path": args.refine_ckpt_path, "val_fold": args.val_fold, "n_images": len(items),
        "ground_truth": args.ground_truth,
        "by_distance": {f"{m:g}": {"mre_mm": round(float(np.mean(errors[m])), 3),
                                   "per_landmark": {n: round(float(v), 2) for n, v in zip(ISBI_LANDMARK_NAMES, np.mean(errors[m], 0))}}
                        for m in args.distances_mm},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
