"""Whether the channels-last memory layout, or one batch for all the shifted crops, makes the shipped networks faster.

A network-level probe on this CPU, printed as JSON: each shipped network as inference runs it (the global MAHT-Net
at its 800 x 640 input, the refinement network's backbone on the 19 crops of one image), its forward pass timed in
PyTorch in the default (NCHW) layout and in channels-last (weights and input converted), under bf16 autocast where
the CPU computes bf16 natively and in fp32, the median of ``--repeats`` runs after two warm-ups; and the refinement
pass of one image with its five crops per landmark (``refine_shifts``) as five batches of 19 against one of 95.
Random inputs: the time does not depend on them. ``max_abs_diff`` is how far the channels-last outputs lie from
the default layout's (the logits' scale beside it)::

    python scripts/probe_channels_last.py --out docs/results/channels_last_probe_avx512bf16.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def median_seconds(fn, repeats: int) -> float:
    fn(), fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return round(statistics.median(times), 4)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/inference.yaml", help="the inference config whose networks to time")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of each forward pass")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    from probe_int8_openvino import shipped_networks

    from bundle.engine import AutocastInferer, bf16_is_native, cpu_facts
    from bundle.io import print_json_report

    crops_per_landmark = 5  # the shipped refine_shifts: the crop itself and four shifted ones
    precisions = (["bf16"] if bf16_is_native("cpu") else []) + ["fp32"]
    result = {"what": "median forward time of each shipped network in PyTorch, NCHW against channels-last, same "
                      "process; the refinement pass of one image as five batches of 19 crops against one of 95",
              "command": "python scripts/probe_channels_last.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **cpu_facts(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "repeats": args.repeats, "networks": {}}
    torch.manual_seed(0)
    for module, shape, name in shipped_networks(args.config):
        x = torch.rand(shape)
        row = result["networks"][name] = {"input_shape": list(shape)}
        for precision in precisions:
            def forward(net, inp, inferer=AutocastInferer("bf16" if precision == "bf16" else "none")):
                with torch.inference_mode():
                    return inferer(inp, net)

            module.to(memory_format=torch.contiguous_format)
            reference = forward(module, x)
            row[f"{precision}_nchw_s"] = median_seconds(lambda: forward(module, x), args.repeats)
            if name != "global":  # the shifted crops of one image: separate batches against one
                many = torch.rand(crops_per_landmark * shape[0], *shape[1:])
                row[f"{precision}_nchw_{crops_per_landmark}_batches_s"] = median_seconds(
                    lambda: [forward(module, b) for b in many.split(shape[0])], args.repeats)
                row[f"{precision}_nchw_one_batch_of_{len(many)}_s"] = median_seconds(
                    lambda: forward(module, many), args.repeats)
            module.to(memory_format=torch.channels_last)
            x_last = x.contiguous(memory_format=torch.channels_last)
            row[f"{precision}_channels_last_s"] = median_seconds(lambda: forward(module, x_last), args.repeats)
            row[f"{precision}_max_abs_diff"] = round(float((forward(module, x_last) - reference).abs().max()), 4)
            row[f"{precision}_logit_scale"] = round(float(reference.abs().max()), 2)
        module.to(memory_format=torch.contiguous_format)
        print(json.dumps({name: row}), file=sys.stderr, flush=True)
    print_json_report(result, args.out)
    return result


if __name__ == "__main__":
    main()
