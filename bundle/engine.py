"""Small pieces for MONAI's Ignite engines that MONAI itself lacks: an inferer that runs under autocast on any
device (MONAI's ``amp`` flag is CUDA-only), and a progress bar that shows the running loss."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from monai.inferers import Inferer
from monai.utils import str2bool

from .heatmaps import heatmap_probs
from .io import atomic_write_text

__all__ = [
    "AutocastInferer",
    "TrainingProgressBar",
    "ImageProgressBar",
    "WarmStart",
    "TimeBudget",
    "LearningCurveWriter",
    "ValidationState",
    "AtomicCheckpointSaver",
    "FinalValidation",
    "TTAInferer",
    "EnsembleNetwork",
    "read_state_dict",
    "load_weights",
    "read_in_eval_mode",
    "autocast_dtype",
    "cpu_has_native_bf16",
    "bf16_is_native",
    "cpu_facts",
    "cpu_recipe_members",
    "cpu_speed_note",
    "shipped_metrics",
]


def read_state_dict(path: str | Path, key: str = "model", what: str = "checkpoint") -> dict:
    """The weights in ``path``: a state dict, or one held under ``key`` (a training run's ``checkpoint_last.pt``). A
    missing file is a ``FileNotFoundError`` naming it as ``what``."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state[key] if key in state and isinstance(state[key], dict) else state


def load_weights(network: torch.nn.Module, path: str | Path, key: str = "model", what: str = "checkpoint") -> torch.nn.Module:
    """Load ``network``'s weights strictly from ``path`` (:func:`read_state_dict`; fp16 ones, as exported, are cast
    to the network's types). Returns ``network``."""
    network.load_state_dict(read_state_dict(path, key, what))
    return network


def read_in_eval_mode(network: torch.nn.Module, inferer, image: torch.Tensor) -> torch.Tensor:
    """The output of ``network`` for one ``(C, H, W)`` image through ``inferer`` (its first output, without the batch
    axis), on the network's device, in eval mode and without gradients whatever mode the network is in: an evaluator
    sets eval mode for its own pass only, so post-processing that reads an image again finds the network as it was
    (MAHT-Net in training mode returns its deep-supervision stack)."""
    from monai.networks.utils import eval_mode

    device = next(network.parameters()).device
    with eval_mode(network):
        out = inferer(torch.as_tensor(image)[None].to(device), network)
    return (out if isinstance(out, torch.Tensor) else out[0])[0]


def cpu_has_native_bf16(cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX). oneDNN's own check where this torch build has
    it (a private op, so looked up rather than called blindly), else the flags Linux reports in ``cpuinfo``; False
    when neither can tell, since fp32 is the safe side."""
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if check is not None:
        try:
            return bool(check())
        except (RuntimeError, TypeError):
            pass
    try:
        flags = Path(cpuinfo).read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def bf16_is_native(device: str | torch.device = "cpu", cpuinfo: str | Path = "/proc/cpuinfo") -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, a CPU with AVX-512 BF16 or AMX
    (:func:`cpu_has_native_bf16`). The one decision behind ``amp: auto`` (:func:`autocast_dtype`), the CPU recipe's
    shape (:func:`cpu_recipe_members`) and inference's hint (:func:`cpu_speed_note`)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return dev.type == "cpu" and cpu_has_native_bf16(cpuinfo)


def cpu_facts(cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """What a timing on this CPU depends on, for benchmark reports: ``cpu_model`` (as Linux names it; empty
    elsewhere), ``cpu_capability`` (the vector instructions torch uses: ``AVX2``, ``AVX512``, ...) and
    ``cpu_native_bf16`` (:func:`cpu_has_native_bf16`: whether ``amp: auto`` runs bf16 here)."""
    try:
        lines = Path(cpuinfo).read_text().splitlines()
    except OSError:
        lines = []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")
    return {"cpu_model": model, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_native_bf16": cpu_has_native_bf16(cpuinfo)}


def cpu_recipe_members(cpuinfo: str | Path = "/proc/cpuinfo") -> int:
    """How many global and refinement networks ``scripts/cpu_recipe.sh`` trains by default: 2 of each (ensembled)
    where training runs in bf16 (a CUDA GPU, or a CPU with native bf16: 118.1 minutes on 2 such cores), 1 of each on
    a CPU without it, where fp32 steps take about 3.5 times longer and two of each would take about 3.5 hours on
    2 cores instead of the recipe's 2 (docs/README.md, "Speed")."""
    return 2 if torch.cuda.is_available() or bf16_is_native("cpu", cpuinfo) else 1


def shipped_metrics(metadata: str | Path | None = None) -> dict:
    """The shipped weights' measured numbers: ``eval_metrics`` of the bundle's ``configs/metadata.json`` (or of
    ``metadata``), the one place that holds them (ISBI Test1, senior annotation: ``isbi2015_test1_senior_mre_mm``
    for the shipped pipeline, ``..._fast_profile`` for configs/inference_fast.yaml, ...). Empty if it can't be read."""
    path = Path(metadata) if metadata else Path(__file__).resolve().parents[1] / "configs" / "metadata.json"
    try:
        metrics = json.loads(path.read_text()).get("eval_metrics", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return metrics if isinstance(metrics, dict) else {}


def cpu_speed_note(precision: str, device: str | torch.device, enabled: bool = True,
                   cpuinfo: str | Path = "/proc/cpuinfo", runtime: str = "pytorch") -> str | None:
    """What inference says (logs, and returns) before it starts on a CPU about the shipped 800 x 640 pipeline's speed.

    In fp32 (no native bf16, or ``precision`` none) it takes about 3.6 s per full image on 2 cores, and
    ``configs/inference_fast.yaml`` under 1 s (docs/README.md, "Speed"; the seconds are those of
    docs/results/benchmark_inference_runtimes_avx2.json, which a test holds them to). With ``runtime`` "pytorch" it
    also names ``runtime: openvino`` (bundle/runtime.py), landmarks within 0.06 mm in about 0.7 times the time there.
    Where bf16 runs natively (``precision`` auto or bf16) and ``runtime`` is "pytorch", it says that OpenVINO runs
    the same pipeline in about 0.8 of PyTorch's time (the medians of three runs on 2 AVX-512 BF16 cores, 1.03 s
    against 1.30 s: docs/results/openvino_static_avx512bf16.json). None elsewhere (a GPU, OpenVINO already on a bf16
    CPU, fp16) and where ``enabled`` is false: the config's ``fast_profile_hint``, which the fast profile turns
    off."""
    if not str2bool(str(enabled), raise_exc=False) or torch.device(device).type != "cpu":
        return None
    precision = str(precision).lower()
    if precision in ("bf16", "auto") and bf16_is_native("cpu", cpuinfo):
        if str(runtime).lower() == "openvino":
            return None
        note = ("this CPU computes the networks in bf16 natively: about 1.3 s per full-size image on 2 cores; "
                "--runtime openvino runs the same pipeline in about 0.8 of that time, about 1.0 s (ISBI Test1 "
                "1.488 mm against 1.478; pip install -r requirements-openvino.txt; docs/README.md, 'Speed').")
        logging.getLogger(__name__).info(note)
        return note
    if precision in ("bf16", "fp16"):  # asked for, and emulated (bf16) or not for the CPU (fp16)
        return None
    metrics = shipped_metrics()
    full, fast = metrics.get("isbi2015_test1_senior_mre_mm"), metrics.get("isbi2015_test1_senior_mre_mm_fast_profile")
    cost, source = "", "docs/README.md, 'Speed'"
    if isinstance(full, (int, float)) and isinstance(fast, (int, float)):  # the measured numbers, from metadata.json
        cost = f", at {fast - full:.2f} mm more error on ISBI Test1: {fast:.2f} against {full:.2f} mm"
        source = f"configs/metadata.json; {source}"
    if str(runtime).lower() == "openvino":
        speed = "this CPU has no native bf16, so OpenVINO runs the networks in fp32: about 2.6 s per full-size image on 2 cores. "
    else:
        speed = ("this CPU computes the networks in fp32 (no native bf16): about 3.6 s per full-size image on 2 cores "
                 "(--runtime openvino: landmarks within 0.06 mm in about 2.6 s, after pip install -r requirements-openvino.txt). ")
    note = (f"{speed}"
            "Layering configs/inference_fast.yaml (--config_file \"['configs/inference.yaml','configs/inference_fast.yaml']\") "
            f"takes under 1 s there{cost} ({source}).")
    logging.getLogger(__name__).info(note)
    return note


def autocast_dtype(precision: str, device: str | torch.device = "cpu") -> torch.dtype | None:
    """``"bf16"`` -> ``torch.bfloat16``, ``"fp16"`` -> ``torch.float16``, ``"none"`` -> None; ``"auto"``: bf16 where
    ``device`` computes in it natively (a CUDA GPU with bf16, a CPU with AVX-512 BF16 / AMX), else None."""
    precision = str(precision).lower()
    if precision == "auto":
        return torch.bfloat16 if bf16_is_native(device) else None
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None, "fp32": None}
    if precision not in table:
        raise ValueError(f"precision should be one of auto, bf16, fp16, none; got {precision!r}.")
    return table[precision]


class AutocastInferer(Inferer):
    """Run the network on the whole input, under ``torch.autocast`` when ``precision`` is bf16 or fp16.

    Outputs are cast back to float32 so losses, decoding and metrics always work in full precision.

    Args:
        precision: ``"bf16"``, ``"fp16"``, ``"none"`` or ``"auto"`` (see :func:`autocast_dtype`).
        device: the device the network runs on (autocast needs its type).
    """

    def __init__(self, precision: str = "none", device: str | torch.device = "cpu"):
        super().__init__()
        self.dtype = autocast_dtype(precision, device)
        self.device_type = torch.device(device).type

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = network(inputs, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out


class TrainingProgressBar:
    """tqdm progress bar over each training epoch, showing the loss (ignite's ``ProgressBar`` with our output)."""

    def __init__(self, persist: bool = False, enabled: bool = True):
        from ignite.handlers import ProgressBar

        self.bar = ProgressBar(persist=persist)
        self.enabled = enabled

    def attach(self, engine) -> None:
        from monai.handlers import from_engine

        if not self.enabled:  # e.g. logs to a file, where a bar is noise
            return
        self.bar.attach(engine, output_transform=lambda out: {"loss": from_engine(["loss"], first=True)(out)})


class ImageProgressBar:
    """tqdm progress bar over the images of an evaluation or inference run (ignite's ``ProgressBar`` on the
    evaluator: images done, total, rate and time left); ``enabled=False`` attaches nothing (logs to a file)."""

    def __init__(self, enabled: bool = True, desc: str = "images"):
        self.enabled = str2bool(str(enabled), raise_exc=False)  # the command line may give the string 'false'
        self.desc = desc

    def attach(self, engine) -> None:
        from ignite.handlers import ProgressBar

        if self.enabled:
            ProgressBar(persist=True, desc=self.desc).attach(engine)


class WarmStart:
    """Before training starts, copy into ``network`` every tensor of ``checkpoint`` whose name and shape match
    (a progressive-training stage starting from the previous stage's weights, whose architecture may differ: a
    transformer switched on, other heads). Does nothing when ``checkpoint`` is None.

    Args:
        checkpoint: path of a state dict (or a dict holding one under ``key``), or None.
        network: the network to initialise.
        key: the entry of the checkpoint that holds the network's state dict, if any.
    """

    def __init__(self, checkpoint: str | None, network: torch.nn.Module, key: str = "model"):
        self.checkpoint, self.network, self.key = checkpoint, network, key
        self.loaded: list[str] = []
        self.skipped: list[str] = []

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine=None) -> None:
        if not self.checkpoint or (engine is not None and engine.state.iteration > 0):
            return  # nothing to load, or a resumed run whose own checkpoint already holds the weights

        if not Path(self.checkpoint).is_file():
            raise FileNotFoundError(f"{self.checkpoint}: warm-start checkpoint not found (run the previous stage first)")
        state = read_state_dict(self.checkpoint, self.key)
        own = self.network.state_dict()
        match = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        self.loaded = sorted(match)
        self.skipped = sorted(k for k in own if k not in match)
        own.update(match)
        self.network.load_state_dict(own)
        logging.getLogger(__name__).info(
            "warm start from %s: %d tensors loaded, %d left as initialised%s", self.checkpoint, len(self.loaded),
            len(self.skipped), f" (e.g. {', '.join(self.skipped[:3])})" if self.skipped else "",
        )


class TimeBudget:
    """Fit training into ``minutes`` of wall time: after ``measure_epochs`` epochs it sets the trainer's
    ``max_epochs`` to the number of epochs that fit (from the mean epoch time so far, validation included) and
    stretches or shrinks the cosine schedule to end there, so the learning rate still decays fully.

    With ``reestimate`` it decides again after every later epoch from the epochs timed so far, so a run that
    slows down (other trainings sharing the GPU start, or stop) still ends inside the budget; the schedule's end
    moves with it.

    A killed run keeps its budget: the handler's ``state_dict`` (the seconds trained, the epoch count decided, the
    recent epochs' end times) goes into ``checkpoint_last.pt`` through :class:`bundle.training.ResumableCheckpoint`'s
    ``save_dict``, so a resumed run counts the minutes trained before the kill, keeps the decided ``max_epochs`` and
    ends where the run would have ended uninterrupted. Without that state (a checkpoint written before 0.5.22) it times
    the resumed epochs only and fits them into a budget of their own. Under DDP every rank takes rank 0's decision, so
    all ranks stop after the same epoch.

    With ``lengthen=False`` the budget is a cap: the run trains the trainer's ``max_epochs`` (and its schedule is left
    as it is) when they fit, fewer (the schedule ending with them) when they do not.

    Args:
        minutes: the training budget; None or 0 disables the handler.
        lr_scheduler: a ``LambdaLR`` made by :func:`bundle.training.warmup_cosine_schedule` (its factor has a
            ``total`` attribute), or None.
        measure_epochs: epochs to time before deciding.
        reestimate: decide again after every epoch (False: once, after ``measure_epochs``).
        lengthen: fill the budget with as many epochs as fit (False: never more than the trainer's ``max_epochs``).
    """

    def __init__(self, minutes: float | None, lr_scheduler=None, measure_epochs: int = 2, reestimate: bool = False,
                 lengthen: bool = True):
        self.minutes, self.lr_scheduler, self.measure_epochs = minutes, lr_scheduler, measure_epochs
        self.reestimate = str2bool(str(reestimate), raise_exc=False)
        self.lengthen = str2bool(str(lengthen), raise_exc=False)
        self._ceiling: int | None = None  # the trainer's max_epochs when it started (the cap when not lengthening)
        self.decided_epochs: int | None = None
        self._engine = None
        self._start: float | None = None
        self._before = 0.0  # seconds trained before this process started (a resumed run)
        self._epoch0: int | None = None  # epochs whose time is not known (a resumed run without saved state)
        self._ends: list[float] = []  # seconds trained at the end of each epoch timed since the decision began

    def attach(self, engine) -> None:
        from ignite.engine import Events

        self._engine = engine
        if not self.minutes:
            return
        engine.add_event_handler(Events.STARTED, self._started)
        engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._epoch_completed)

    def elapsed(self) -> float:
        """Seconds of training so far, those before a resume included."""
        return self._before + (0.0 if self._start is None else time.perf_counter() - self._start)

    def state_dict(self) -> dict:
        return {"elapsed_s": float(self.elapsed()), "decided_epochs": self.decided_epochs, "ends": list(self._ends),
                "epoch0": self._epoch0}

    def load_state_dict(self, state: dict) -> None:
        """Called by ResumableCheckpoint at ``STARTED``, after ``_started``: the clock goes on from the saved seconds."""
        self._before = float(state["elapsed_s"])
        self._start = time.perf_counter()
        self.decided_epochs = state["decided_epochs"]
        self._ends = [float(t) for t in state["ends"]]
        self._epoch0 = state.get("epoch0") or 0
        if self.minutes and self.decided_epochs is not None and self._engine is not None:
            self._engine.state.max_epochs = int(self.decided_epochs)

    def _started(self, engine) -> None:
        self._start = time.perf_counter()
        self._ceiling = engine.state.max_epochs

    def _epoch_started(self, engine) -> None:
        if self._epoch0 is None:  # first epoch of a fresh run (0), or of a resumed run whose earlier time is unknown
            self._epoch0 = engine.state.epoch - 1

    def _epoch_completed(self, engine) -> None:
        done = engine.state.epoch - self._epoch0
        if done < self.measure_epochs or (self.decided_epochs is not None and not self.reestimate):
            return
        elapsed = self.elapsed()
        self._ends.append(elapsed)
        per_epoch = elapsed / done
        if self.reestimate and len(self._ends) > 5:  # the recent pace counts when it is the slower one
            per_epoch = max(per_epoch, (self._ends[-1] - self._ends[-6]) / 5)
        remaining = self.minutes * 60 - elapsed
        fit = max(engine.state.epoch + 1, engine.state.epoch + int(remaining // per_epoch))
        if not self.lengthen and self._ceiling is not None:
            fit = min(fit, int(self._ceiling))
        import ignite.distributed as idist

        total = int(idist.broadcast(fit, src=0))  # under DDP each rank's clock differs: all take rank 0's decision
        if self.decided_epochs is not None and total >= engine.state.max_epochs:
            return  # later epochs only shorten the run: the end of the schedule never moves out
        first = self.decided_epochs is None
        self.decided_epochs = total
        engine.state.max_epochs = total
        if self.lr_scheduler is not None:
            for f in getattr(self.lr_scheduler, "lr_lambdas", []):
                if hasattr(f, "total"):
                    f.total = total
        logging.getLogger(__name__).info(
            "time budget %.1f min: %.1f s per epoch, training for %d epochs%s", self.minutes, per_epoch, total,
            "" if first else " (re-estimated)",
        )


class LearningCurveWriter:
    """Evaluator handler: after each validation appends ``{"epoch", "minutes", metrics...}`` to a JSON list at
    ``path`` (written atomically), the learning curve of validation metrics against minutes of training.

    Args:
        path: the JSON file.
        trainer: the trainer whose epoch is recorded (set in ``run`` when the trainer refers to the evaluator).
    """

    def __init__(self, path: str, trainer=None):
        self.path, self.trainer = path, trainer
        self.t0 = time.perf_counter()
        self.points: list[dict] = []
        if os.path.isfile(path):  # a resumed run continues the curve; older points past its epoch are dropped
            with open(path) as f:
                self.points = json.load(f)
            self.t0 -= 60 * max((p.get("minutes", 0.0) for p in self.points), default=0.0)

    def set_trainer(self, trainer) -> None:
        self.trainer = trainer

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine) -> None:
        point = {
            "epoch": int(self.trainer.state.epoch) if self.trainer is not None else int(engine.state.epoch),
            "minutes": round((time.perf_counter() - self.t0) / 60, 3),
        }
        point.update({k: round(float(v), 4) for k, v in engine.state.metrics.items() if isinstance(v, (int, float))})
        self.points = [p for p in self.points if p["epoch"] < point["epoch"]] + [point]
        atomic_write_text(self.path, json.dumps(self.points, indent=1))


class ValidationState:
    """The validation-side state a resumed run needs, for :class:`bundle.training.ResumableCheckpoint`'s
    ``save_dict``: the evaluator's best metric and epoch, the best-model saver's record (so a resumed run does not
    overwrite ``model.pt`` with a worse model), and the early-stopping counter.

    Args:
        evaluator: MONAI's evaluator (its ``state.best_metric`` / ``best_metric_epoch``).
        best_saver: MONAI's ``CheckpointSaver`` with ``save_key_metric=True``, or None.
        early_stop: MONAI's ``EarlyStopHandler``, or None.
    """

    def __init__(self, evaluator, best_saver=None, early_stop=None):
        self.evaluator, self.best_saver, self.early_stop = evaluator, best_saver, early_stop

    def state_dict(self) -> dict:
        state = {
            "best_metric": float(getattr(self.evaluator.state, "best_metric", -1)),
            "best_metric_epoch": int(getattr(self.evaluator.state, "best_metric_epoch", -1)),
        }
        saver = getattr(self.best_saver, "_key_metric_checkpoint", None)
        if saver is not None:
            state["best_saver"] = saver.state_dict()
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None:
            state["early_stop"] = stopper.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        self.evaluator.state.best_metric = state["best_metric"]
        self.evaluator.state.best_metric_epoch = state["best_metric_epoch"]
        saver = getattr(self.best_saver, "_key_metric_checkpoint", None)
        if saver is not None and "best_saver" in state:
            saver.load_state_dict(state["best_saver"])
        stopper = getattr(self.early_stop, "_handler", None)
        if stopper is not None and "early_stop" in state:
            stopper.load_state_dict(state["early_stop"])


class AtomicCheckpointSaver:
    """MONAI's ``CheckpointSaver`` writing through a temporary file renamed into place, so a run killed while
    saving never leaves a half-written ``model.pt`` (MONAI turns ignite's atomic writes off for the sake of file
    permissions, which ignite now sets itself). Takes ``CheckpointSaver``'s arguments."""

    def __new__(cls, *args, **kwargs):
        from monai.handlers import CheckpointSaver

        saver = CheckpointSaver(*args, **kwargs)
        for name in ("_final_checkpoint", "_key_metric_checkpoint", "_interval_checkpoint"):
            checkpoint = getattr(saver, name, None)
            if checkpoint is not None:
                checkpoint.save_handler._atomic = True
        return saver


class FinalValidation:
    """Validate once more when training ends on an epoch that the ``interval`` of MONAI's ``ValidationHandler``
    skipped (max_epochs not a multiple of it, or a time budget or early stop ending the run), so the last epochs
    can still become the best model.

    Args:
        validator: the evaluator.
        interval: the ValidationHandler's interval in epochs.
    """

    def __init__(self, validator, interval: int):
        self.validator, self.interval = validator, max(1, int(interval))

    def attach(self, engine) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine) -> None:
        if engine.state.epoch % self.interval and engine.state.epoch > getattr(self.validator.state, "epoch", 0):
            self.validator.run(engine.state.epoch)


class TTAInferer(AutocastInferer):
    """Test-time augmentation: the network also sees the image rotated and scaled about its centre (never flipped:
    a mirrored lateral cephalogram is the other side of a face), each output's softmax is warped back into the
    original frame, and the log of the mean probability is returned as the logits.

    Args:
        rotations_deg: extra rotations, degrees.
        scales: extra scalings.
        precision, device: as :class:`AutocastInferer`.
    """

    def __init__(self, rotations_deg=(-3.0, 3.0), scales=(0.95, 1.05), precision: str = "none",
                 device: str | torch.device = "cpu"):
        super().__init__(precision, device)
        self.transforms = [(float(r), 1.0) for r in rotations_deg] + [(0.0, float(s)) for s in scales]

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        import math

        from .transforms import affine_warp, similarity_matrix

        size = inputs.shape[-2:]
        centre = torch.tensor([(size[0] - 1) / 2, (size[1] - 1) / 2])
        total = heatmap_probs(super().__call__(inputs, network, *args, **kwargs))
        for angle, scale in self.transforms:
            m = similarity_matrix(centre, centre, math.radians(angle), scale).float()
            warped = torch.stack([affine_warp(x, m, size) for x in inputs])
            p = heatmap_probs(super().__call__(warped, network, *args, **kwargs))
            back = torch.linalg.inv(m.double()).float()
            total = total + torch.stack([affine_warp(x, back, size) for x in p])
        return torch.log((total / (1 + len(self.transforms))).clamp_min(1e-12))


class EnsembleNetwork(torch.nn.Module):
    """Checkpoint ensembling: every member maps the same input to heatmap logits; their spatial softmaxes are
    averaged and the log of the mean returned as logits (decoding and the uncertainty then work unchanged).
    A deep-supervision stack ``(B, S, N, H, W)`` contributes its finest head.

    Args:
        members: networks with the same input and output grid.
    """

    def __init__(self, members):
        super().__init__()
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member.")
        self.members = torch.nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = None
        for member in self.members:
            out = member(x)
            p = heatmap_probs(out[:, 0] if out.ndim == 5 else out)
            total = p if total is None else total + p
        return torch.log((total / len(self.members)).clamp_min(1e-12))

    @classmethod
    def from_checkpoints(cls, network: torch.nn.Module, paths, device: str | torch.device = "cpu", key: str = "model"):
        """One copy of ``network`` per checkpoint in ``paths`` (a state dict, or a dict holding one under ``key``
        such as ``checkpoint_last.pt``), loaded strictly."""
        import copy

        members = []
        for path in paths:
            members.append(load_weights(copy.deepcopy(network), path, key, "ensemble member checkpoint"))
        return cls(members).to(device)

