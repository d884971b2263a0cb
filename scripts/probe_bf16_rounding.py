"""How far a float-rounding change of the input moves the inference pipeline's landmarks, printed as JSON.

Each image goes through ``configs/inference.yaml`` twice: once with MONAI's ``ScaleIntensityRangePercentilesd``
(``torch.quantile`` below 1M pixels) and once with the bundle's (``numpy.percentile``). The two scaled images differ by
float rounding only (at most a few 1e-9), so any landmark that moves shows how much the pipeline's reading turns on
the last bit of its input. Also counted: how many pixels of each global heatmap tie at its maximum.

    python scripts/probe_bf16_rounding.py --images ../shared/data/isbi2015/RawImage/TrainingData \
        --names 002.jpg 009.jpg 056.jpg --out docs/results/bf16_rounding_probe.json
    python scripts/probe_bf16_rounding.py ... --float32_logits   # each network's last layer in fp32 (not adopted)
    python scripts/probe_bf16_rounding.py ... --amp none         # fp32: nothing should move

Session q (0.5.19) ran it on the 13 Train images whose landmarks moved in its bf16 evaluation check
(docs/results/decision_rules_2026_12_07q.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def logits_in_float32(network: torch.nn.Module) -> None:
    """Run the layer that writes each network's logits (MAHT-Net's ``head``, a MONAI U-Net's last convolution) in
    float32 under autocast: the variant session q measured and did not adopt."""
    from monai.networks.nets import UNet

    from bundle.networks import MAHTNet

    for module in network.modules():
        layer = module.head if isinstance(module, MAHTNet) else (
            [m for m in module.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)][-1] if isinstance(module, UNet) else None)
        if layer is None:
            continue
        inner = layer.forward

        def forward(x, _inner=inner):
            with torch.autocast(x.device.type, enabled=False):
                return _inner(x.float())

        layer.forward = forward


def pipeline(monai_scaling: bool, amp: str, float32_logits: bool):
    from monai.bundle import ConfigParser

    from bundle.engine import load_weights

    parser = ConfigParser()
    parser.read_config([str(ROOT / "configs" / "inference.yaml")])
    parser.update({"bundle_root": str(ROOT), "num_workers": 0, "amp": amp})
    if monai_scaling:
        for key in ("fine_transforms#1#_target_", "input_intensity#_target_"):
            parser[key] = "monai.transforms.ScaleIntensityRangePercentilesd"
    pre, post = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
    net = load_weights(parser.get_parsed_content("network"), parser.get_parsed_content("ckpt_path")).eval()
    refine_net = load_weights(parser.get_parsed_content("refine_network"), parser.get_parsed_content("refine_ckpt_path"))
    if float32_logits:
        logits_in_float32(net)
        logits_in_float32(refine_net)
    return pre, post, parser.get_parsed_content("inferer"), net


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder of images")
    ap.add_argument("--names", nargs="+", required=True, help="file names in it")
    ap.add_argument("--amp", default="auto", help="the pipeline's amp (auto: bf16 where native)")
    ap.add_argument("--float32_logits", action="store_true", help="each network's last layer in fp32")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    runs = {m: pipeline(m, args.amp, args.float32_logits) for m in (True, False)}
    per_image, moved_total = {}, 0
    with torch.inference_mode():
        for name in args.names:
            outs = {}
            for monai_scaling, (pre, post, inferer, net) in runs.items():
                d = pre({"image": str(Path(args.images) / name)})
                logits = inferer(d["image"][None], net)
                outs[monai_scaling] = (d, logits, post({**d, "pred": logits[0]}))
            (da, la, a), (db, lb, b) = outs[True], outs[False]
            flat = lb[0].flatten(1)
            move_mm = (a["pred_landmarks"] - b["pred_landmarks"]).norm(dim=-1) * torch.as_tensor(b["spacing"]).float().mean()
            moved = int((move_mm > 0.01).sum())
            moved_total += moved
            per_image[name] = {
                "input_difference": float((da["image"] - db["image"]).abs().max()),
                "logit_difference": float((la - lb).abs().max()),
                "pixels_at_each_maximum": (flat == flat.max(1).values[:, None]).sum(1).tolist(),
                "landmarks_moved_over_0.01_mm": moved,
                "largest_move_mm": round(float(move_mm.max()), 4),
            }
    from bundle.engine import cpu_facts
    from bundle.io import print_json_report

    report = {"what": "landmarks moved by MONAI's percentile scaling against the bundle's (float rounding apart)",
              "command": "python " + " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
              "amp": args.amp, "float32_logits": args.float32_logits, "torch": torch.__version__, **cpu_facts(),
              "landmarks_moved_over_0.01_mm": moved_total, "of": sum(len(r["pixels_at_each_maximum"]) for r in per_image.values()),
              "images": per_image}
    print_json_report(report, args.out, indent=1)


if __name__ == "__main__":
    main()
