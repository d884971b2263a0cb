"""Are the global pass's misses a second peak of its heatmap? For each validation image of each cross-validation
fold, the global model's heatmap is decoded as the evaluation decodes it (shape check included); its softmax mass
within 3 mm of the peak is measured, and the strongest other local maximum outside that disk (7 x 7 non-maximum
suppression) is decoded on its own. Prints JSON: by bin of the global error, how often that second peak lies within
2 mm of the truth and the mass near each. If the truth were often a second peak, refining the two best peaks
would fix misses; if not, the misses are confident single peaks on the wrong spot.

    python scripts/global_modes.py --ckpt runs/s6/shipped_model.pt runs/gpu_1127c/f1_last_fp16.pt ... \\
        --shape_models runs/s6/shape/fold0.json ... (one per fold, fold 0 first)
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

from bundle.engine import load_weights, read_in_eval_mode  # noqa: E402

CONFIGS = ["train.yaml", "isbi_gpu.yaml", "maht_net.yaml", "evaluate.yaml"]
BINS_MM = [0, 2, 3, 4, 6, 10, np.inf]


def global_pass(ckpt: str, fold: int, dataset_dir: str, shape_model: str | None = None):
    """The evaluation's global pass (configs/evaluate.yaml over the shipped recipe's configs) with the checkpoint
    ``ckpt`` on the validation images of cross-validation fold ``fold``: ``(preprocessing, items, read, decode)``,
    ``read(image)`` giving the ``(N, h, w)`` heatmap logits of a preprocessed ``(1, H, W)`` image."""
    p = ConfigParser()
    p.read_config([str(ROOT / "configs" / c) for c in CONFIGS])
    p.update({"bundle_root": str(ROOT), "dataset_dir": dataset_dir, "refine": False, "eval_split": "val",
              "val_fold": fold, "shape_model": shape_model, "ckpt_path": ckpt})
    pre, items = p.get_parsed_content("validate#preprocessing"), p.get_parsed_content("validate#datalist")
    net, inferer, decode = p.get_parsed_content("network"), p.get_parsed_content("validate#inferer"), p.get_parsed_content("decode")
    load_weights(net, ckpt).eval()

    def read(image: torch.Tensor) -> torch.Tensor:
        logits = read_in_eval_mode(net, inferer, image).float()
        return logits[0] if logits.ndim == 4 else logits  # a deep-supervision stack, finest first

    return pre, items, read, decode


def fold_rows(ckpt: str, shape_model: str | None, fold: int, dataset_dir: str) -> list[np.ndarray]:
    """Per image ``(19, 4)``: error of the peak, error of the second peak, mass near each (mm, share)."""
    pre, items, read, decode = global_pass(ckpt, fold, dataset_dir, shape_model)
    rows = []
    for item in items:
        d = pre(item)
        logits = read(d["image"])
        first = decode({**d, "pred": logits})
        n, h, w = logits.shape
        hm_mm = float((torch.as_tensor(first["spacing"]).float() / torch.as_tensor(d["scale"]).float()).mean())
        gy, gx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")

        def disk(yx: torch.Tensor, radius_mm: float) -> torch.Tensor:
            return ((gy[None] - yx[:, 0, None, None]) ** 2 + (gx[None] - yx[:, 1, None, None]) ** 2) <= (radius_mm / hm_mm) ** 2

        def peak(l: torch.Tensor) -> torch.Tensor:
            flat = l.reshape(n, -1).argmax(1)
            return torch.stack([flat // w, flat % w], 1)

        prob = torch.softmax(logits.reshape(n, -1), 1).reshape(n, h, w)
        near1 = disk(peak(logits), 3.0)
        pooled = torch.nn.functional.max_pool2d(logits[None], 7, stride=1, padding=3)[0]
        second = peak(logits.masked_fill(~((logits >= pooled) & ~near1), -1e4))
        near2 = disk(second, 1.5)
        other = decode({**d, "pred": logits.masked_fill(~near2, -1e4)})
        truth = first["true_mm"].float()
        rows.append(np.stack([(first["pred_mm"].float() - truth).norm(dim=1).numpy(),
                              (other["pred_mm"].float() - truth).norm(dim=1).numpy(),
                              (prob * near1).sum((1, 2)).numpy(), (prob * near2).sum((1, 2)).numpy()], 1))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", nargs="+", required=True, help="one global checkpoint per fold, fold 0 first")
    ap.add_argument("--shape_models", nargs="*", default=None, help="one shape model per fold (default: none)")
    ap.add_argument("--dataset_dir", default=str(ROOT.parent / "shared" / "data" / "isbi2015"))
    args = ap.parse_args(argv)
    shapes = args.shape_models or [None] * len(args.ckpt)
    if len(shapes) != len(args.ckpt):
        ap.error("give one shape model per checkpoint")
    rows = []
    for k, (ckpt, shape) in enumerate(zip(args.ckpt, shapes)):
        rows += fold_rows(ckpt, shape, k, args.dataset_dir)
        print(f"fold {k}: {len(rows)} images", file=sys.stderr, flush=True)
    r = np.stack(rows)
    e1, e2, m1, m2 = (r[..., i] for i in range(4))
    result = {"n_images": len(r), "global_mre_mm": round(float(e1.mean()), 4), "by_global_error": []}
    for lo, hi in zip(BINS_MM[:-1], BINS_MM[1:]):
        sel = (e1 >= lo) & (e1 < hi)
        if sel.any():
            result["by_global_error"].append({
                "global_error_mm": [lo, hi if np.isfinite(hi) else None], "landmarks": int(sel.sum()),
                "mass_within_3mm_of_peak": round(float(m1[sel].mean()), 3),
                "second_peak_mass": round(float(m2[sel].mean()), 4),
                "second_peak_within_2mm_of_truth_pct": round(100 * float((e2[sel] < 2).mean()), 1)})
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
