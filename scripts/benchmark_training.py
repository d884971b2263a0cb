"""Training throughput of the bundle's real training pipeline, printed as JSON.

For each precision (none, bf16) it runs the configured data loader (workers, augmentation, heatmaps) and training
step (forward, loss, backward, AdamW) for ``--steps`` steps and reports steps and samples per second and the share
of wall time the step spent waiting for data. All precisions are measured in the same run.

    python scripts/benchmark_training.py                                     # U-Net, synthetic data, 256x208
    python scripts/benchmark_training.py --config configs/isbi_cpu.yaml --dataset_dir ../shared/data/isbi2015
    python scripts/benchmark_training.py --config configs/maht_net.yaml     # another network
    python scripts/benchmark_training.py --precisions none --compile        # and the step under torch.compile

``--compile`` times each precision again with the network wrapped in ``torch.compile`` (default inductor backend);
its warm-up steps, which include the compiling, are reported as ``warmup_seconds``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(configs: list[str], overrides: dict, precision: str, steps: int, warmup: int, compile: bool = False) -> dict:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(configs)
    parser.update({"bundle_root": str(ROOT), "amp": precision, **overrides})
    loader = parser.get_parsed_content("train#dataloader")
    net = parser.get_parsed_content("network")
    loss_fn = parser.get_parsed_content("loss")
    opt = parser.get_parsed_content("optimizer")
    inferer = parser.get_parsed_content("inferer")
    device = parser.get_parsed_content("device")
    net.train()
    model = torch.compile(net) if compile else net
    wait, total, done, samples, warm = 0.0, 0.0, 0, 0, 0.0
    it = iter(loader)
    while done < warmup + steps:
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        t1 = time.perf_counter()
        x, y = batch["image"].to(device), batch["label"].to(device)
        if compile:  # dynamo does not trace MONAI's MetaTensor (its __torch_function__): plain tensors in
            x, y = (t.as_tensor() if hasattr(t, "as_tensor") else t for t in (x, y))
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(inferer(x, model), y)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if done >= warmup:
            wait += t1 - t0
            total += t2 - t0
            samples += x.shape[0]
        else:
            warm += t2 - t0
        done += 1
    return {
        "precision": precision,
        "compiled": compile,
        "warmup_seconds": round(warm, 1),
        "steps_per_second": round(steps / total, 3),
        "samples_per_second": round(samples / total, 3),
        "seconds_per_step": round(total / steps, 4),
        "data_wait_share": round(wait / total, 4),
        "loss_last": round(float(loss), 4),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", action="append", default=[], help="override file layered on train.yaml (repeat)")
    ap.add_argument("--dataset_dir", default=None, help="ISBI-layout folder (default: the synthetic set)")
    ap.add_argument("--image_size", type=int, nargs=2, default=None, help="H W (default: the config's)")
    ap.add_argument("--batch_size", type=int, default=None)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=["none", "bf16"])
    ap.add_argument("--limit", type=int, default=24, help="training images to load (keeps the cache small)")
    ap.add_argument("--compile", action="store_true", help="also time each precision with torch.compile")
    args = ap.parse_args()
    configs = [str(ROOT / "configs" / "train.yaml"), *args.config]
    overrides: dict = {"data_limit": args.limit}
    if args.dataset_dir:
        overrides["dataset_dir"] = args.dataset_dir
    if args.image_size:
        overrides["image_size"] = args.image_size
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    from bundle.engine import cpu_facts

    torch.set_num_threads(os.cpu_count() or 1)
    results = [measure(configs, overrides, p, args.steps, args.warmup, c)
               for p in args.precisions for c in ((False, True) if args.compile else (False,))]
    base = results[0]["samples_per_second"]
    for r in results:
        r["speedup_vs_" + results[0]["precision"]] = round(r["samples_per_second"] / base, 3)
    print(json.dumps({
        "benchmark": "training throughput of the configured pipeline (data loader + step)",
        "configs": configs,
        "overrides": overrides,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        **cpu_facts(),
        "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
