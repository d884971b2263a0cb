"""Where one full-size image's inference time goes: each step of configs/inference.yaml timed, printed as JSON.

Runs the inference pipeline (``preprocessing``, the global network through the config's ``inferer``, then each
``postprocessing`` transform, the refinement pass among them) on ``--n`` images, one at a time as
scripts/benchmark_inference.py does, and reports each step's median seconds and the median total. ``--runtime
openvino`` runs both networks in OpenVINO (bundle/runtime.py). Where a step's time goes inside (the refinement
network against its crops) is not split.

    python scripts/profile_inference.py --images ../shared/data/isbi2015/RawImage/Test1Data --n 8 --runtime openvino
    python scripts/profile_inference.py ... --set "input_intensity#_target_=monai.transforms.ScaleIntensityRangePercentilesd"
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", required=True, help="folder of full-size images")
    ap.add_argument("--n", type=int, default=8, help="images timed (after --warmup more)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--runtime", default="pytorch", choices=["pytorch", "openvino"])
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override (YAML value; repeatable), e.g. input_intensity#_target_=monai.transforms.ScaleIntensityRangePercentilesd")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args(argv)

    from monai.bundle import ConfigParser
    from monai.handlers import CheckpointLoader

    from bundle.engine import cpu_facts
    from bundle.io import print_json_report
    from bundle.runtime import NetworkRuntime

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.yaml"))
    overrides = {k.strip(): yaml.safe_load(v) for k, _, v in (pair.partition("=") for pair in args.set)}
    parser.update({"bundle_root": str(ROOT), "num_workers": 0, "runtime": args.runtime, **overrides})
    pre, post = parser.get_parsed_content("preprocessing"), parser.get_parsed_content("postprocessing")
    inferer, net = parser.get_parsed_content("inferer"), parser.get_parsed_content("network").eval()
    engine = SimpleNamespace(state=SimpleNamespace(epoch=0, max_epochs=None))
    for handler in parser.get_parsed_content("handlers"):  # the weights, then OpenVINO, as the bundle's handlers do
        if isinstance(handler, (CheckpointLoader, NetworkRuntime)):
            handler(engine)
    files = sorted(p for p in Path(args.images).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".bmp", ".png"))
    files = files[:args.warmup] + files[:args.n]
    steps = defaultdict(list)

    def timed(name: str, step, data):
        t0 = time.perf_counter()
        out = step(data)
        steps[name].append(time.perf_counter() - t0)
        return out

    with torch.inference_mode():
        for path in files:
            t0 = time.perf_counter()
            d = {"image": str(path)}
            for i, transform in enumerate(pre.transforms):
                d = timed(f"pre {i}: {type(transform).__name__}", transform, d)
            logits = timed("global network (inferer)", lambda x: inferer(x["image"][None], net), d)
            d = {**d, "pred": logits[0]}
            # each post-processing transform timed by itself, those inside UnlessErrord too (the files are read)
            steps_after = [u for t in post.transforms for u in getattr(getattr(t, "transforms", None), "transforms", [t])]
            for i, transform in enumerate(steps_after):
                d = timed(f"post {i}: {type(transform).__name__}", transform, d)
            steps["total"].append(time.perf_counter() - t0)
    result = {"what": "median seconds of each inference step per full-size image", "command": "python " + " ".join(
                  [Path(sys.argv[0]).as_posix()] + (argv if argv is not None else sys.argv[1:])),
              "runtime": args.runtime, "overrides": overrides, "images": len(files) - args.warmup, "threads": torch.get_num_threads(),
              "torch": torch.__version__, **cpu_facts(),
              "seconds": {name: round(statistics.median(times[args.warmup:]), 4) for name, times in steps.items()}}
    print_json_report(result, args.out)
    return result


if __name__ == "__main__":
    main()
