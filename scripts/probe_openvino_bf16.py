"""What the shipped networks cost on this CPU, and how fast each runtime and precision computes them.

A network-level probe, printed as JSON: each shipped network as inference runs it (the global MAHT-Net at its
800 x 640 input, the refinement network's backbone on the 19 crops of one image), its floating-point operations
counted by PyTorch's ``FlopCounterMode``, and its forward pass timed (median of ``--repeats`` runs after two warm-ups)
in PyTorch under bf16 autocast where the CPU computes bf16 natively, in PyTorch fp32, and in OpenVINO compiled in f32
and, where the CPU has native bf16, in bf16 (``bundle.runtime``'s settings, compiled for the fixed input shape as
the bundle has done since 0.5.20; the committed JSON of session p predates that and used the dynamic batch axis). ``gflop_per_s`` is what each one reaches.
``shipped_networks_s`` adds the global pass and the refinement's five crops per landmark (``refine_shifts``) for each:
the networks' share of one image's inference, before reading, resampling and decoding. Random inputs: the time does
not depend on them. ``max_abs_diff`` is how far each output lies from PyTorch fp32's (the logits' scale beside it)::

    python scripts/probe_openvino_bf16.py --out docs/results/openvino_bf16_probe_avx512bf16.json

Needs OpenVINO and ONNX (``pip install -r requirements-openvino.txt``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/inference.yaml", help="the inference config whose networks to time")
    ap.add_argument("--repeats", type=int, default=7, help="timed runs of each forward pass")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)
    try:
        import openvino
    except ImportError as e:
        raise SystemExit(f"this probe needs OpenVINO: pip install -r requirements-openvino.txt ({e})") from e
    from torch.utils.flop_counter import FlopCounterMode

    from probe_channels_last import median_seconds
    from probe_int8_openvino import shipped_networks

    from bundle.engine import AutocastInferer, bf16_is_native, cpu_facts
    from bundle.io import print_json_report
    from bundle.runtime import compile_forward, export_onnx, openvino_settings

    crops_per_landmark = 5  # the shipped refine_shifts: the crop itself and four shifted ones
    native = bf16_is_native("cpu")
    threads = torch.get_num_threads()
    core = openvino.Core()
    ways = (["pytorch_bf16"] if native else []) + ["pytorch_fp32", "openvino_f32"] + (["openvino_bf16"] if native else [])
    result = {"what": "each shipped network's forward pass: its GFLOP, and its median time in PyTorch and OpenVINO, "
                      "bf16 where native and fp32, same process, random inputs",
              "command": "python scripts/probe_openvino_bf16.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **cpu_facts(), "threads": threads, "torch": torch.__version__, "openvino": openvino.__version__,
              "repeats": args.repeats, "crops_per_landmark": crops_per_landmark, "networks": {}}
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for module, shape, name in shipped_networks(args.config):
            x = torch.rand(shape)
            with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                reference = module(x)
            gflop = counter.get_total_flops() / 1e9
            row = result["networks"][name] = {"input_shape": list(shape), "gflop": round(gflop, 2),
                                              "logit_scale": round(float(reference.abs().max()), 2)}
            model = core.read_model(str(export_onnx(module, shape, Path(tmp) / f"{name}.onnx")))
            for way in ways:
                if way.startswith("pytorch"):
                    def forward(inp, inferer=AutocastInferer("bf16" if way.endswith("bf16") else "none")):
                        with torch.inference_mode():
                            return inferer(inp, module)
                else:  # as the bundle runs it (bundle.runtime), compiled in this precision for this shape
                    forward = compile_forward(core, model, shape, openvino_settings(threads, way.split("_")[1]))
                seconds = median_seconds(lambda: forward(x), args.repeats)
                row[way] = {"s": seconds, "gflop_per_s": round(gflop / seconds, 1),
                            "max_abs_diff": round(float((forward(x) - reference).abs().max()), 4)}
            print(json.dumps({name: row}), file=sys.stderr, flush=True)
    global_row, refine_row = result["networks"]["global"], result["networks"]["refinement"]
    result["shipped_networks_s"] = {way: round(global_row[way]["s"] + crops_per_landmark * refine_row[way]["s"], 3)
                                    for way in ways}
    result["shipped_networks_gflop"] = round(global_row["gflop"] + crops_per_landmark * refine_row["gflop"], 1)
    print_json_report(result, args.out)
    return result


if __name__ == "__main__":
    main()
