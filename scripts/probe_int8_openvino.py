"""How much faster the shipped networks run in OpenVINO with int8 weights and activations than in fp32, on this CPU.

A network-level probe, printed as JSON: each network (the global MAHT-Net at its 800 x 640 input, the refinement
U-Net on one batch of 19 crops) is exported as the bundle exports it (``bundle.runtime.export_onnx``), compiled by
OpenVINO in fp32, then quantized to int8 by NNCF's post-training quantization and compiled again; both are timed on
the same input, ``--repeats`` times after one warm-up, with the bundle's OpenVINO settings (latency hint, PyTorch's
thread count). NNCF's calibration here reads random inputs: enough to time the int8 graph, whose speed does not
depend on the quantization ranges, not to judge its accuracy. NNCF is not a dependency of the bundle::

    pip install nncf==3.4.0        # with requirements-openvino.txt
    python scripts/probe_int8_openvino.py --out docs/results/int8_probe_avx2.json

The question it answers: can int8 bring the whole pipeline under 1 s on a CPU without native bf16, where the
fp32 networks alone take about 0.8 s (global) and 5 x 0.29 s (refinement, five crops per landmark)?
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def median_latency(compiled, x: np.ndarray, repeats: int) -> float:
    request = compiled.create_infer_request()
    request.infer({0: x})  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        request.infer({0: x})
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def shipped_networks(config: str) -> list[tuple[torch.nn.Module, tuple[int, ...], str]]:
    """The config's networks with their weights, as its ``network_runtime`` handler hands them to OpenVINO:
    ``(module, input shape, name)`` for the global network and the refinement network's backbone."""
    from monai.bundle import ConfigParser

    from bundle.engine import load_weights

    parser = ConfigParser()
    parser.read_config(str(ROOT / config))
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')"})
    load_weights(parser.get_parsed_content("network"), parser.get_parsed_content("ckpt_path")).eval()
    load_weights(parser.get_parsed_content("refine_network"), parser.get_parsed_content("refine_ckpt_path")).eval()
    return parser.get_parsed_content("network_runtime").networks


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="configs/inference.yaml", help="the inference config whose networks to time")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs of each compiled network")
    ap.add_argument("--calibration", type=int, default=8, help="random inputs NNCF calibrates on")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    try:
        import nncf
        import openvino
    except ImportError as e:
        raise SystemExit(f"this probe needs OpenVINO and NNCF, which the bundle does not install: pip install -r "
                         f"requirements-openvino.txt nncf==3.4.0 ({e})") from e

    from bundle.engine import cpu_facts
    from bundle.io import print_json_report
    from bundle.runtime import export_onnx, openvino_settings

    threads = torch.get_num_threads()
    core = openvino.Core()
    settings = openvino_settings(threads)
    rng = np.random.default_rng(0)
    result = {"what": "median latency of each shipped network in OpenVINO, fp32 against int8 (NNCF post-training "
                      "quantization, random calibration inputs), same input, same process",
              "command": "python scripts/probe_int8_openvino.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              **cpu_facts(), "threads": threads,
              "openvino": openvino.__version__, "nncf": nncf.__version__, "repeats": args.repeats, "networks": {}}
    for module, shape, name in shipped_networks(args.config):
        with tempfile.TemporaryDirectory() as tmp:
            model = core.read_model(str(export_onnx(module, shape, Path(tmp) / f"{name}.onnx")))
        x = rng.random(shape, dtype=np.float32)
        fp32 = median_latency(core.compile_model(model, "CPU", settings), x, args.repeats)
        calibration = nncf.Dataset([rng.random(shape, dtype=np.float32) for _ in range(args.calibration)])
        t0 = time.perf_counter()
        quantized = nncf.quantize(model, calibration, subset_size=args.calibration)
        quantize_s = time.perf_counter() - t0
        int8 = median_latency(core.compile_model(quantized, "CPU", settings), x, args.repeats)
        result["networks"][name] = {"input_shape": list(shape), "fp32_s": round(fp32, 4), "int8_s": round(int8, 4),
                                    "int8_over_fp32": round(int8 / fp32, 3), "quantize_s": round(quantize_s, 1)}
        print(json.dumps({name: result["networks"][name]}), file=sys.stderr, flush=True)
    print_json_report(result, args.out)
    return result


if __name__ == "__main__":
    main()
