"""The trained networks run by another runtime than PyTorch: OpenVINO on the CPU (optional, ``runtime: openvino``).

On CPUs without native bf16 PyTorch runs both networks in fp32; OpenVINO runs the same fp32 graphs and the whole
pipeline takes about 0.7 times as long there (2 AVX2 cores: 2.62 s against 3.57 s per full ISBI image). On Test1
2846 of the 2850 landmarks stay within 0.01 pixel of PyTorch's and 4 move by 0.04-0.05 mm, where two pixels nearly
share a heatmap's maximum; the MRE is unchanged (docs/README.md, "Speed"). Each network is exported with MONAI's
:func:`~monai.networks.utils.convert_to_onnx` once the weights are loaded, compiled by OpenVINO for the CPU, checked
against PyTorch on a random input, and its module's ``forward`` then calls OpenVINO: the pipeline's transforms keep
the module objects they hold and run unchanged.

OpenVINO and ONNX are not dependencies of the bundle: ``pip install -r requirements-openvino.txt``.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

RUNTIMES = ("pytorch", "openvino")
OPENVINO_INSTALL = "pip install -r requirements-openvino.txt"


def export_onnx(module: torch.nn.Module, input_shape: Sequence[int], path: str | Path) -> Path:
    """``module`` (eval mode, on the CPU) to an ONNX file at ``path`` for inputs of ``input_shape``, the batch axis
    dynamic: MONAI's ``convert_to_onnx`` with PyTorch's TorchScript-based exporter (the networks' shapes are fixed by
    the config, so a trace holds)."""
    from monai.networks.utils import convert_to_onnx

    module.eval()
    with warnings.catch_warnings():  # the tracer's notes on shape checks and the exporter's deprecation notice
        warnings.simplefilter("ignore")
        convert_to_onnx(module, [torch.rand(*input_shape)], input_names=["x"], output_names=["y"],
                        dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, filename=str(path), opset_version=17,
                        dynamo=False)
    return Path(path)


class OpenVINOForward:
    """A compiled OpenVINO model called like a network's ``forward``: fp32 tensor in, fp32 tensor out (a copy, as
    the request reuses its output buffer)."""

    def __init__(self, compiled):
        self.request = compiled.create_infer_request()

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.request.infer({0: np.ascontiguousarray(x.detach().float().cpu().numpy())})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError(f"runtime: openvino needs the OpenVINO package, which the bundle does not install by "
                          f"default: {OPENVINO_INSTALL} (or runtime: pytorch)") from e
    return openvino


def run_in_openvino(module: torch.nn.Module, input_shape: Sequence[int], threads: int | None = None,
                    name: str = "network", check: bool = True) -> torch.nn.Module:
    """Make ``module`` (weights loaded, on the CPU) run in OpenVINO, fp32, with ``threads`` threads (default:
    PyTorch's). With ``check`` its output on a random input must match PyTorch's (max |difference| at most 1e-3 of
    the output's largest magnitude + 1e-3), or it stays a PyTorch module and a ``RuntimeError`` says so."""
    openvino = import_openvino()
    device = next(module.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"runtime: openvino runs the {name} network on the CPU, but it is on {device}: use runtime: "
                         f"pytorch there")
    core = openvino.Core()
    settings = {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "INFERENCE_PRECISION_HINT": "f32",
                "PERFORMANCE_HINT": "LATENCY"}
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(module, input_shape, Path(tmp) / f"{name}.onnx")
        compiled = core.compile_model(core.read_model(str(path)), "CPU", settings)
    forward = OpenVINOForward(compiled)
    if check:
        x = torch.rand(*input_shape)
        with torch.inference_mode():
            expected = module(x).float()
        got = forward(x)
        error = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
        tolerance = 1e-3 * float(expected.abs().max()) + 1e-3
        if not error <= tolerance:
            raise RuntimeError(f"the {name} network in OpenVINO gives {tuple(got.shape)} outputs up to {error:.3g} "
                               f"from PyTorch's {tuple(expected.shape)} (tolerance {tolerance:.3g}); use runtime: "
                               f"pytorch")
    module.forward = forward
    return module


class NetworkRuntime:
    """Ignite handler of inference and evaluation: with ``runtime`` "openvino", at the engine's start (after the
    ``CheckpointLoader`` handlers listed before it, so the weights are in) the global network and the refinement
    network's backbone are handed to :func:`run_in_openvino`; with "pytorch" (the default) nothing changes.

    Args:
        runtime: "pytorch" or "openvino".
        network: the global network; ``input_shape`` its input ``(1, C, H, W)``.
        refine_network: the refinement network's backbone (``LandmarkCropNet.backbone``), or None without the
            refinement; ``refine_input_shape`` its input ``(N landmarks, channels, h, w)``.
        device: the workflow's device; OpenVINO runs on the CPU only.
    """

    def __init__(self, runtime: str = "pytorch", network: torch.nn.Module | None = None,
                 input_shape: Sequence[int] = (), refine_network: torch.nn.Module | None = None,
                 refine_input_shape: Sequence[int] = (), device: str | torch.device = "cpu"):
        self.runtime = str(runtime).lower()
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
        if self.runtime == "openvino":
            if torch.device(device).type != "cpu":
                raise ValueError(f"runtime: openvino runs on the CPU, and the device is {device}: use runtime: pytorch")
            import_openvino()  # fail now, before any image is read
        self.networks = [(n, tuple(int(s) for s in shape), name)
                         for n, shape, name in ((network, input_shape, "global"), (refine_network, refine_input_shape, "refinement"))
                         if n is not None]
        self.done = False

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        if self.runtime == "pytorch" or self.done:
            return
        for network, shape, name in self.networks:
            t0 = time.perf_counter()
            run_in_openvino(network, shape, name=name)
            logger.info("the %s network runs in OpenVINO (exported, compiled and checked in %.1f s)", name,
                        time.perf_counter() - t0)
        self.done = True
