"""The trained networks run by another runtime than PyTorch: OpenVINO on the CPU (optional, ``runtime: openvino``).

On CPUs without native bf16 PyTorch runs both networks in fp32; OpenVINO runs the same fp32 graphs and the whole
pipeline takes about 0.7 times as long there (2 AVX2 cores: 2.62 s against 3.57 s per full ISBI image). On Test1
2846 of the 2850 landmarks stay within 0.01 pixel of PyTorch's and 4 move by 0.04-0.05 mm, where two pixels nearly
share a heatmap's maximum; the MRE is unchanged (docs/README.md, "Speed"). Where the pipeline's ``amp`` runs bf16
natively (a CPU with AVX-512 BF16 or AMX), OpenVINO computes in bf16 too (:func:`openvino_precision`; until 0.5.17 it
stayed fp32 there and was slower than PyTorch). Each network is exported with MONAI's
:func:`~monai.networks.utils.convert_to_onnx` once the weights are loaded, compiled by OpenVINO for the CPU, checked
against PyTorch on a random input, and its module's ``forward`` then calls OpenVINO: the pipeline's transforms keep
the module objects they hold and run unchanged.

The export, the compilation and the check take 6.7-8.6 s for the shipped pair, so each exported network is kept as
OpenVINO IR in a cache folder (``runtime_cache``; by default ``~/.cache/cephalometric-landmarks/openvino``, or under
``$XDG_CACHE_HOME``), keyed by everything the export depends on: the network's structure and weights, its input
shape, and the torch, OpenVINO and export versions. A later start with the same key reads and compiles the IR
without exporting or checking again (the IR was checked when it was written; its weights are checked against the
SHA-256 kept beside them): 0.7-1.1 s for the pair, and 5 Test1 images took 26.0-26.5 s through the whole inference
command against 29.1-31.1 s in PyTorch (docs/results/openvino_cache_avx2.json). The folder keeps the
``CACHE_KEEP`` networks used last (about 29 MB for the shipped pair) and deletes older ones.

OpenVINO and ONNX are not dependencies of the bundle: ``pip install -r requirements-openvino.txt``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
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
EXPORT_VERSION = 1  # raise it when export_onnx changes what it writes: IR cached from the older export is not reused
CACHE_KEEP = 8  # networks the runtime cache keeps, the ones used last (each start marks the ones it reads)


def default_cache_dir() -> Path:
    """Where ``runtime: openvino`` keeps the exported networks by default: ``$XDG_CACHE_HOME`` (else ``~/.cache``, or
    the temporary folder where there is no home) ``/cephalometric-landmarks/openvino``."""
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = Path.home() / ".cache"
        except (RuntimeError, KeyError):  # no HOME and no password entry (some containers)
            base = Path(tempfile.gettempdir())
    return Path(base) / "cephalometric-landmarks" / "openvino"


def network_key(module: torch.nn.Module, input_shape: Sequence[int], openvino_version: str) -> str:
    """A hex digest of what ``module``'s exported graph depends on: its class and structure (``repr``), every
    tensor of its state (names, types, shapes, bytes), ``input_shape``, and the torch, OpenVINO and export versions."""
    digest = hashlib.sha256(f"{EXPORT_VERSION}|{torch.__version__}|{openvino_version}|{tuple(int(s) for s in input_shape)}|"
                            f"{type(module).__module__}.{type(module).__qualname__}|{module!r}".encode())
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"|{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_cached(core, xml: Path, name: str):
    """The IR at ``xml``, or None when there is none, its weights differ from the checksum written beside them, or it
    can't be read (then it is exported again)."""
    weights, checksum = xml.with_suffix(".bin"), xml.with_suffix(".sha256")
    if not (xml.is_file() and weights.is_file() and checksum.is_file()):
        return None
    if _file_digest(weights) != checksum.read_text().strip():
        logger.warning("the %s network's cached OpenVINO weights %s do not match their checksum: exporting it again",
                       name, weights)
        return None
    try:
        model = core.read_model(str(xml))
    except RuntimeError as e:
        logger.warning("the %s network's cached OpenVINO IR %s can't be read (%s): exporting it again", name, xml,
                       str(e).splitlines()[0] if str(e) else type(e).__name__)
        return None
    with contextlib.suppress(OSError):  # a read-only cache is still usable
        os.utime(xml)  # used now: the last to be pruned
    return model


def _write_cached(openvino, model, xml: Path, name: str) -> bool:
    """Keep ``model`` as IR at ``xml`` (its .bin beside it, and the .bin's SHA-256 in a .sha256 file), fp32 as
    compiled, written under a temporary name and moved into place so that a reader never sees half a file. A folder
    that can't be written costs a warning, not the run."""
    try:
        xml.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=xml.parent, prefix=".writing-") as tmp:
            part = Path(tmp) / xml.name
            openvino.save_model(model, str(part), compress_to_fp16=False)
            part.with_suffix(".sha256").write_text(_file_digest(part.with_suffix(".bin")) + "\n")
            for suffix in (".bin", ".sha256", ".xml"):  # the .xml last: a reader looks for it first
                os.replace(part.with_suffix(suffix), xml.with_suffix(suffix))
        _prune(xml.parent)
        return True
    except (OSError, RuntimeError) as e:
        logger.warning("the %s network's OpenVINO IR could not be kept in %s (%s): the next start exports it again",
                       name, xml.parent, e)
        return False


def _prune(folder: Path) -> None:
    """Delete all but the ``CACHE_KEEP`` networks of the cache ``folder`` used last (an .xml's time is its last use)."""

    def last_use(path: Path) -> float:
        try:
            return path.stat().st_mtime
        except OSError:  # deleted meanwhile by another start
            return 0.0

    for old in sorted(folder.glob("*.xml"), key=last_use, reverse=True)[CACHE_KEEP:]:
        for suffix in (".xml", ".bin", ".sha256"):  # the .xml first: a reader then sees no entry, not half of one
            old.with_suffix(suffix).unlink(missing_ok=True)


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
    the request reuses its output buffer).

    With ``shape`` the model was compiled for inputs of that shape only (faster: on 2 AVX-512 BF16 cores the shipped
    pipeline took 0.74-0.79 of PyTorch's time in the same run instead of 0.84, docs/results/openvino_static_avx512bf16.json);
    an input of another shape runs on ``fallback()``, a compile for any batch made the first time one comes."""

    def __init__(self, compiled, source: str = "export", shape: Sequence[int] | None = None, fallback=None):
        self.request = compiled.create_infer_request()
        self.source = source  # "export": exported from PyTorch at this start; "cache": read from the runtime cache
        # what OpenVINO compiled it to compute in ("f32" or "bf16"), as it reports it
        self.precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self.shape = tuple(int(s) for s in shape) if shape is not None else None
        self.fallback, self.other_request = fallback, None

    def _request_for(self, shape: tuple[int, ...]):
        if self.shape is None or shape == self.shape or self.fallback is None:
            return self.request
        if self.other_request is None:
            logger.info("an input of shape %s, not the %s compiled for: compiling for any batch too", shape, self.shape)
            self.other_request = self.fallback().create_infer_request()
        return self.other_request

    def __call__(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        x = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = self._request_for(tuple(x.shape)).infer({0: x})[0]
        return torch.from_numpy(np.array(out, dtype=np.float32))


def compile_forward(core, model, input_shape: Sequence[int], settings: dict, source: str = "export") -> OpenVINOForward:
    """``model`` (OpenVINO, batch axis dynamic) compiled for the CPU with ``settings`` for inputs of ``input_shape``
    (a reshaped copy: ``model`` itself stays dynamic), called like a network's ``forward``; an input of another
    shape compiles ``model`` for any batch when it first comes."""
    static = model.clone()
    static.reshape({0: [int(s) for s in input_shape]})
    return OpenVINOForward(core.compile_model(static, "CPU", settings), source, input_shape,
                           lambda: core.compile_model(model, "CPU", settings))


def import_openvino():
    try:
        import openvino
    except ImportError as e:
        raise ImportError(f"runtime: openvino needs the OpenVINO package, which the bundle does not install by "
                          f"default: {OPENVINO_INSTALL} (or runtime: pytorch)") from e
    return openvino


PRECISIONS = ("f32", "bf16")
TOLERANCE = {"f32": 1e-3, "bf16": 5e-2}  # the check against PyTorch fp32: a share of the output's largest magnitude


def openvino_precision(amp: str = "none") -> str:
    """The precision OpenVINO computes in for a pipeline whose ``amp`` is ``amp``: "bf16" where ``amp`` runs bf16
    on this CPU natively (``auto`` or ``bf16`` on a CPU with AVX-512 BF16 or AMX), else "f32" (PyTorch, too, runs
    fp32 there, or emulates bf16 at a loss)."""
    from .engine import autocast_dtype, bf16_is_native

    return "bf16" if autocast_dtype(amp, "cpu") is torch.bfloat16 and bf16_is_native("cpu") else "f32"


def openvino_settings(threads: int | None = None, precision: str = "f32") -> dict:
    """The bundle's OpenVINO CPU settings: ``precision`` ("f32" or "bf16"), latency first, ``threads`` threads
    (default: PyTorch's)."""
    if precision not in PRECISIONS:
        raise ValueError(f"OpenVINO precision should be one of {', '.join(PRECISIONS)}; got {precision!r}")
    return {"INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()), "INFERENCE_PRECISION_HINT": precision,
            "PERFORMANCE_HINT": "LATENCY"}


def run_in_openvino(module: torch.nn.Module, input_shape: Sequence[int], threads: int | None = None,
                    name: str = "network", check: bool = True, cache_dir: str | Path | None = None,
                    precision: str = "f32") -> torch.nn.Module:
    """Make ``module`` (weights loaded, on the CPU) run in OpenVINO, in ``precision`` ("f32", or "bf16" where the CPU
    has it: :func:`openvino_precision`), with ``threads`` threads (default: PyTorch's), compiled for inputs of
    ``input_shape`` (an input of another shape compiles the graph for any batch when it first comes:
    :func:`compile_forward`). With ``check`` its output on a
    random input must match PyTorch's in fp32 (max |difference| at most ``TOLERANCE[precision]`` of the output's
    largest magnitude, plus as much in absolute terms: 1e-3 for f32, 5e-2 for bf16, which rounds to 8 bits of
    mantissa), or it stays a PyTorch module and a ``RuntimeError`` says so. The kept IR is the fp32 graph either
    way: the precision is chosen when it is compiled.

    With ``cache_dir`` the exported (and checked) graph is kept there as OpenVINO IR under :func:`network_key`, and a
    later call for the same network, shape and versions reads it instead of exporting and checking again. The new
    ``forward``'s ``source`` says which happened ("export" or "cache")."""
    openvino = import_openvino()
    device = next(module.parameters()).device
    if device.type != "cpu":
        raise ValueError(f"runtime: openvino runs the {name} network on the CPU, but it is on {device}: use runtime: "
                         f"pytorch there")
    core = openvino.Core()
    xml = Path(cache_dir) / f"{name}-{network_key(module, input_shape, openvino.__version__)[:24]}.xml" if cache_dir else None
    with tempfile.TemporaryDirectory() as tmp:
        model = _read_cached(core, xml, name) if xml else None
        source = "export" if model is None else "cache"
        if model is None:
            model = core.read_model(str(export_onnx(module, input_shape, Path(tmp) / f"{name}.onnx")))
        # compiled for the one shape the pipeline gives it; the kept IR stays dynamic
        forward = compile_forward(core, model, input_shape, openvino_settings(threads, precision), source)
    if check and source == "export":
        x = torch.rand(*input_shape)
        with torch.inference_mode():
            expected = module(x).float()
        got = forward(x)
        error = float((got - expected).abs().max()) if got.shape == expected.shape else float("inf")
        tolerance = TOLERANCE[precision] * (float(expected.abs().max()) + 1)
        if not error <= tolerance:
            raise RuntimeError(f"the {name} network in OpenVINO ({precision}) gives {tuple(got.shape)} outputs up to "
                               f"{error:.3g} from PyTorch's {tuple(expected.shape)} (tolerance {tolerance:.3g}); use "
                               f"runtime: pytorch")
    if xml and source == "export":
        _write_cached(openvino, model, xml, name)
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
        cache_dir: where the exported networks are kept for the next start (:func:`run_in_openvino`); None: nowhere,
            each start exports again.
        amp: the pipeline's ``amp``; OpenVINO computes in bf16 where that runs bf16 natively on this CPU, else in
            fp32 (:func:`openvino_precision`).
    """

    def __init__(self, runtime: str = "pytorch", network: torch.nn.Module | None = None,
                 input_shape: Sequence[int] = (), refine_network: torch.nn.Module | None = None,
                 refine_input_shape: Sequence[int] = (), device: str | torch.device = "cpu",
                 cache_dir: str | Path | None = None, amp: str = "none"):
        self.runtime = str(runtime).lower()
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")
        self.precision = openvino_precision(amp)
        if self.runtime == "openvino":
            if torch.device(device).type != "cpu":
                raise ValueError(f"runtime: openvino runs on the CPU, and the device is {device}: use runtime: pytorch")
            import_openvino()  # fail now, before any image is read
        self.networks = [(n, tuple(int(s) for s in shape), name)
                         for n, shape, name in ((network, input_shape, "global"), (refine_network, refine_input_shape, "refinement"))
                         if n is not None]
        off = cache_dir is None or str(cache_dir).strip().lower() in ("", "none", "null", "false")
        self.cache_dir = None if off else Path(cache_dir)
        self.done = False

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        if self.runtime == "pytorch" or self.done:
            return
        for network, shape, name in self.networks:
            t0 = time.perf_counter()
            run_in_openvino(network, shape, name=name, cache_dir=self.cache_dir, precision=self.precision)
            how = ("read from the cache and compiled" if network.forward.source == "cache" else
                   "exported, compiled and checked" + (f"; kept in {self.cache_dir}" if self.cache_dir else ""))
            logger.info("the %s network runs in OpenVINO, %s (%s in %.1f s)", name, network.forward.precision, how,
                        time.perf_counter() - t0)
        self.done = True
