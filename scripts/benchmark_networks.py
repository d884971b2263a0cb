"""Compare MAHT-Net with the MONAI UNet baseline and the U-Net on an EfficientNet-Lite0 encoder (MONAI's FlexibleUNet,
configs/efficientnet_lite.yaml): parameters, forward GFLOPs, train-step and inference time.

Prints one JSON object. Examples::

    python scripts/benchmark_networks.py                                   # 512 x 416, batch 2, CPU or first GPU
    python scripts/benchmark_networks.py --size 256 208 --steps 3          # quick check
    python scripts/benchmark_networks.py --device cuda --amp bf16 --steps 20
    python scripts/benchmark_networks.py --maht '{"use_transformer": false}'   # an ablation

Train step = forward + backward (spatial-softmax cross-entropy against random heatmaps) + AdamW step; the median
over ``--steps`` timed steps after ``--warmup`` untimed ones. Inference = eval-mode forward under
``torch.inference_mode``, median batch time divided by the batch size. GFLOPs = forward of one image counted by
``torch.utils.flop_counter.FlopCounterMode`` (multiply-add = 2 FLOPs; convolutions and matrix products only),
eval mode, fp32. Timings on a shared CPU are noisy: compare the two models within one run (``ratio_maht_over_unet``)
and prefer ``--threads 1`` when other processes load the machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import monai  # noqa: E402
from monai.networks.nets import FlexibleUNet, UNet  # noqa: E402

from bundle.networks import MAHTNet  # noqa: E402  (also registers the efficientnet-lite0 backbone)


def build_models(out_channels: int, maht_kwargs: dict) -> dict[str, nn.Module]:
    return {
        "maht_net": MAHTNet(in_channels=1, out_channels=out_channels, **maht_kwargs),
        "unet": UNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=out_channels,
            channels=(32, 64, 128, 256, 512),
            strides=(2, 2, 2, 2),
            num_res_units=2,
        ),
        # the timing does not depend on the weights: random ones, so the package of ImageNet weights is not needed
        "lite_unet": FlexibleUNet(
            in_channels=1, out_channels=out_channels, backbone="efficientnet-lite0", pretrained=False
        ),
    }


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def count_gflops(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> float | None:
    try:
        from torch.utils.flop_counter import FlopCounterMode
    except ImportError:  # pragma: no cover
        return None
    model.eval()
    x = torch.randn(1, *shape[1:], device=device)
    # FlopCounterMode does not count the CPU flash-attention kernel: count the equivalent einsum path instead
    flash = [m for m in model.modules() if getattr(m, "use_flash_attention", False) and hasattr(m, "save_attn")]
    for m in flash:
        m.use_flash_attention = False
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    finally:
        for m in flash:
            m.use_flash_attention = True
    return counter.get_total_flops() / 1e9


def heatmap_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Spatial-softmax cross-entropy; deep-supervision outputs (B, S, N, H, W) are averaged over S."""
    if logits.ndim == 5:
        target = target.unsqueeze(1).expand_as(logits)
    log_p = F.log_softmax(logits.float().flatten(-2), dim=-1)
    return -(target.flatten(-2) * log_p).sum(-1).mean()


def time_train(model, shape, out_channels, device, amp_ctx, steps, warmup) -> float:
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(shape, device=device)
    target = torch.rand(shape[0], out_channels, *shape[2:], device=device)
    target = target / target.flatten(-2).sum(-1)[..., None, None]
    times = []
    for i in range(warmup + steps):
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with amp_ctx():
            out = model(x)
        loss = heatmap_loss(out, target)
        loss.backward()
        opt.step()
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_infer(model, shape, device, amp_ctx, steps, warmup) -> float:
    model.eval()
    x = torch.randn(shape, device=device)
    times = []
    with torch.inference_mode():
        for i in range(warmup + steps):
            sync(device)
            t0 = time.perf_counter()
            with amp_ctx():
                model(x)
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return statistics.median(times) / shape[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 416), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--amp", choices=("bf16", "none"), default="none")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--out-channels", type=int, default=19)
    parser.add_argument("--maht", default="{}", help="JSON dict of extra MAHTNet constructor arguments")
    parser.add_argument("--no-flops", action="store_true", help="skip the FLOP count")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.amp == "bf16":

        def amp_ctx():
            return torch.autocast(device_type=device.type, dtype=torch.bfloat16)

    else:
        amp_ctx = nullcontext
    torch.manual_seed(0)
    shape = (args.batch, 1, args.size[0], args.size[1])
    maht_kwargs = json.loads(args.maht)

    results: dict[str, dict] = {}
    for name, model in build_models(args.out_channels, maht_kwargs).items():
        model = model.to(device)
        r: dict = {"params_M": sum(p.numel() for p in model.parameters()) / 1e6}
        if name == "maht_net":
            r["transformer_params_M"] = sum(p.numel() for p in model.transformer_parameters()) / 1e6
        r["forward_gflops_per_image"] = None if args.no_flops else count_gflops(model, shape, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        r["train_step_s"] = time_train(model, shape, args.out_channels, device, amp_ctx, args.steps, args.warmup)
        if device.type == "cuda":
            r["train_peak_mem_GiB"] = torch.cuda.max_memory_allocated(device) / 2**30
        r["infer_s_per_image"] = time_infer(model, shape, device, amp_ctx, args.steps, args.warmup)
        results[name] = r
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    def ratios(a: dict, b: dict) -> dict:  # a / b for each compared quantity (None where one is missing or zero)
        keys = ("params_M", "forward_gflops_per_image", "train_step_s", "infer_s_per_image")
        return {k: None if a.get(k) is None or not b.get(k) else a[k] / b[k] for k in keys}

    out = {
        "size": list(args.size),
        "batch": args.batch,
        "steps": args.steps,
        "warmup": args.warmup,
        "amp": args.amp,
        "maht_kwargs": maht_kwargs,
        "torch": torch.__version__,
        "monai": monai.__version__,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or "cpu"),
        "device_type": device.type,
        "threads": torch.get_num_threads(),
        "models": results,
        "ratio_maht_over_unet": ratios(results["maht_net"], results["unet"]),
        "ratio_lite_over_maht": ratios(results["lite_unet"], results["maht_net"]),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
