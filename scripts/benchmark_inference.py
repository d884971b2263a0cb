"""End-to-end inference time per full-size (2400 x 1935) cephalogram, printed as JSON.

Times everything the inference bundle does for one image: reading the file, resampling, intensity scaling, the
network, sub-pixel decoding, the coarse-to-fine refinement pass when the config has it on, and mapping back to
original pixels (not the overlay picture). Each configuration is measured in the same run, so the ratios compare
like with like; one with the refinement on is timed again with ``refine: false`` to show what the second pass costs.

    python scripts/benchmark_inference.py                       # the shipped pipeline (configs/inference.yaml)
    python scripts/benchmark_inference.py --images ../shared/data/isbi2015/RawImage/Test1Data --n 10
    python scripts/benchmark_inference.py --override configs/inference_unet.yaml   # and the U-Net baseline
    python scripts/benchmark_inference.py --variant amp=none    # and the shipped pipeline in full precision
    python scripts/benchmark_inference.py --override configs/inference_fast.yaml \
        --override configs/inference_fast.yaml+configs/inference_unet.yaml   # the fast CPU profile, and a U-Net in it
    python scripts/benchmark_inference.py --runtime onnxruntime --runtime openvino   # the same networks, other runtimes

``--runtime`` times the shipped pipeline (and each ``--override``) again with its two networks (the global network
and the refinement network's backbone) exported to ONNX and run by OpenVINO (the bundle's ``runtime: openvino``,
bundle/runtime.py; ``pip install -r requirements-openvino.txt``) or, for comparison, ONNX Runtime (``pip install
onnxruntime``), fp32, everything else unchanged, and reports how far its landmarks fall from PyTorch's on the same
images (``max_landmark_difference_mm``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def full_size_images(folder: str | None, n: int, tmp: Path) -> list[str]:
    if folder:
        files = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".bmp", ".png"))
        if files:
            return [str(p) for p in files[:n]]
    from PIL import Image

    from bundle.synthetic import synthesize_cephalogram

    rng = np.random.default_rng(0)
    paths = []
    for i in range(min(n, 3)):  # synthetic full-size images (reused round-robin)
        img, _ = synthesize_cephalogram(rng, (2400, 1935))
        p = tmp / f"full_{i}.jpg"
        Image.fromarray(img).save(p, quality=95)
        paths.append(str(p))
    return [paths[i % len(paths)] for i in range(n)]


def run_in_onnxruntime(module: torch.nn.Module, shape: tuple[int, ...], threads: int, tmp: Path) -> None:
    """For comparison only (the bundle offers ``runtime: openvino``, bundle/runtime.py): ``module`` exported as the
    bundle exports it and its ``forward`` run by ONNX Runtime's CPU provider, fp32, ``threads`` threads."""
    import onnxruntime

    from bundle.runtime import export_onnx

    path = export_onnx(module, shape, tmp / f"onnxruntime_{id(module)}.onnx")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    module.forward = lambda x, *a, **k: torch.from_numpy(session.run(None, {"x": x.detach().float().cpu().numpy()})[0])


def time_config(config_files: list[str], images: list[str], warmup: int, overrides: dict, runtime: str | None = None,
                tmp: Path | None = None) -> dict:
    from monai.bundle import ConfigParser
    from monai.handlers import CheckpointLoader

    from bundle.runtime import NetworkRuntime

    parser = ConfigParser()
    parser.read_config(config_files)
    parser.update({"bundle_root": str(ROOT), **overrides, **({"runtime": runtime} if runtime == "openvino" else {})})
    pre = parser.get_parsed_content("preprocessing")
    post = parser.get_parsed_content("postprocessing")
    inferer = parser.get_parsed_content("inferer")
    net = parser.get_parsed_content("network").eval()  # an EnsembleNetwork when --variant ensemble=[...]
    refine = bool(parser.get_parsed_content("use_refine"))
    # the weights go in the way the inference bundle loads them: its CheckpointLoader handlers (an ensemble's
    # members were loaded when the network was built); weights of another architecture than the variant's
    # (e.g. a U-Net variant and the shipped MAHT-Net file) leave it with random weights, which times the same
    engine = SimpleNamespace(state=SimpleNamespace(epoch=0, max_epochs=None))
    loaded, networks = True, []
    for handler in parser.get_parsed_content("handlers"):
        if isinstance(handler, NetworkRuntime):  # runtime: openvino, after the weights (as in the bundle's handlers)
            handler(engine)
            networks = handler.networks
        if isinstance(handler, CheckpointLoader):
            try:
                handler(engine)
            except (RuntimeError, FileNotFoundError):
                loaded = False
    face = parser.get_parsed_content("face")
    if runtime == "onnxruntime":
        for module, shape, _ in networks:
            run_in_onnxruntime(module, shape, torch.get_num_threads(), tmp)
    if not loaded:  # random weights are unsure of every image, which "auto" would read every other way too, and
        from bundle.orientation import OrientImaged  # place landmarks anywhere, which reframing would read again;
        # trained ones are sure of ISBI-like images and frame them as in training, which costs them only the checks:
        # random weights are timed reading each image once, as it is
        face = "right"
        for t in post.transforms:
            if isinstance(t, OrientImaged):
                t.face, t.bone, t.reframe = face, "bright", None
    times, landmarks_mm = [], []
    with torch.inference_mode():
        for i, path in enumerate(images[:warmup] + images):
            t0 = time.perf_counter()
            d = pre({"image": path})
            logits = inferer(d["image"][None], net)
            out = post({**d, "pred": logits[0]})
            assert out["pred_landmarks"].shape[-1] == 2
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                landmarks_mm.append(torch.as_tensor(out["pred_landmarks"]).float() * torch.as_tensor(out["spacing"]).float())
    return {
        "config": config_files,
        "network": type(net).__name__,
        "parameters": sum(p.numel() for p in net.parameters()),
        "image_size": parser.get_parsed_content("image_size"),
        "refine": refine,
        "refine_members": len(parser.get_parsed_content("refine_ensemble") or []) or int(refine),
        "amp": parser.get_parsed_content("amp"),
        "overrides": {k: v for k, v in overrides.items() if k != "num_workers"},
        "runtime": parser.get_parsed_content("runtime") if runtime != "onnxruntime" else runtime,
        # what OpenVINO computes in (bf16 where amp runs bf16 natively, bundle.runtime.openvino_precision)
        **({"runtime_precision": networks[0][0].forward.precision} if runtime == "openvino" and networks else {}),
        "weights_loaded": loaded,
        "face": face,
        "seconds_per_image_median": round(statistics.median(times), 4),
        "seconds_per_image_mean": round(statistics.mean(times), 4),
        "n_images": len(times),
        "_landmarks_mm": landmarks_mm,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", default=None, help="folder of full-size images (default: synthetic 2400x1935 JPEGs)")
    ap.add_argument("--n", type=int, default=5, help="images to time")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--override", action="append", default=[], help="extra config layered on inference.yaml (repeat; 'a.yaml+b.yaml' layers both)")
    ap.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE",
                    help="also time inference.yaml with these overrides ('key=value;key=value', YAML values; repeatable)")
    ap.add_argument("--runtime", action="append", default=[], choices=["onnxruntime", "openvino"],
                    help="also time the shipped pipeline and each --override with both networks run by this runtime (fp32; repeatable)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from bundle.engine import cpu_facts

    with tempfile.TemporaryDirectory() as tmp:
        images = full_size_images(args.images, args.n, Path(tmp))
        base = [str(ROOT / "configs" / "inference.yaml")]
        results = []
        for configs in [base] + [base + extra.split("+") for extra in args.override]:
            results.append(time_config(configs, images, args.warmup, {"num_workers": 0}))
            if results[-1]["refine"]:
                results.append(time_config(configs, images, args.warmup, {"num_workers": 0, "refine": False}))
        for variant in args.variant:  # "key=value" or "key=value;key=value"
            pairs = [p.partition("=") for p in variant.split(";") if p.strip()]
            overrides = {k.strip(): yaml.safe_load(v) for k, _, v in pairs}
            results.append(time_config(base, images, args.warmup, {"num_workers": 0, **overrides}))
        for runtime in args.runtime:  # the shipped pipeline and each --override again, both networks in that runtime
            for configs in [base] + [base + extra.split("+") for extra in args.override]:
                reference = next(r for r in results if r["config"] == configs and not r["overrides"])
                results.append(time_config(configs, images, args.warmup, {"num_workers": 0}, runtime, Path(tmp)))
                results[-1]["max_landmark_difference_mm"] = round(max(
                    float((a - b).norm(dim=-1).max()) for a, b in zip(results[-1]["_landmarks_mm"], reference["_landmarks_mm"])), 5)
    for r in results:
        del r["_landmarks_mm"]
    versions = {}
    for name in ("onnxruntime", "openvino") if args.runtime else ():
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    report = {
        "benchmark": "end-to-end inference per full-size image (read, resample, network, decode, map back)",
        "image_source": args.images or "synthetic 2400x1935 JPEG",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **({"runtimes": versions} if versions else {}),
        "cpu": platform.processor() or platform.machine(),
        **cpu_facts(),
        "results": results,
    }
    if len(results) > 1:
        report["ratio_to_first"] = [round(r["seconds_per_image_median"] / results[0]["seconds_per_image_median"], 3) for r in results]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
