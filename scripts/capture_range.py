"""The refinement network's capture range: how much of a known displacement of the crop centre it corrects.

For each validation image, each landmark's crop is centred at a fixed distance from the ground truth in a random
direction (no global model involved) and refined exactly as the evaluation's second pass does (the transforms and
the refinement step of ``configs/evaluate.yaml``, shifted crops included, with the ISBI GPU recipe's precision); the
remaining radial error is averaged per distance and per landmark. Prints JSON.

    python scripts/capture_range.py --refine_ckpt_path runs/cv/refine/fold_0/model.pt --val_fold 0
    python scripts/capture_range.py ... -- --refine_context_factor "[4,16]"   # config overrides after --
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

CONFIGS = ["train.yaml", "isbi_gpu.yaml", "maht_net.yaml", "evaluate.yaml"]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    overrides: dict = {}
    if "--" in argv:  # --key value pairs for the configs, parsed as the bundle's command line would
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
        overrides = {k.lstrip("-"): json.loads(v) if v[:1] in "[{" else v for k, v in zip(extra[::2], extra[1::2])}
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2015"))
    ap.add_argument("--refine_ckpt_path", required=True)
    ap.add_argument("--val_fold", type=int, default=None, help="cross-validation fold whose validation images to use")
    ap.add_argument("--split_seed", type=int, default=0)
    ap.add_argument("--ground_truth", default="senior")
    ap.add_argument("--distances_mm", type=float, nargs="+", default=[0, 1, 2, 3, 4, 5, 6, 8])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args(argv)
    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / c) for c in CONFIGS])
    parser.update({"bundle_root": str(ROOT), "dataset_dir": args.dataset_dir, "refine": True, "eval_split": "val",
                   "val_fold": args.val_fold, "split_seed": args.split_seed, "eval_ground_truth": args.ground_truth,
                   **overrides})
    load = parser.get_parsed_content("train#deterministic_transforms")[0]  # LoadCephalogramd
    fine = parser.get_parsed_content("fine_transforms")
    refine = parser.get_parsed_content("refine_landmarks")
    load_weights(refine.network, args.refine_ckpt_path)
    items = parser.get_parsed_content("validate#datalist")[: args.limit]
    names = parser.get_parsed_content("landmark_names")
    rng = np.random.default_rng(args.seed)
    errors = {m: [] for m in args.distances_mm}
    for item in items:
        d = load(item)
        for t in fine:
            d = t(d)
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
                                   "per_landmark": {n: round(float(v), 2) for n, v in zip(names, np.mean(errors[m], 0))}}
                        for m in args.distances_mm},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
