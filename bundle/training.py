"""Ignite handlers that make training trustworthy: atomic, resumable checkpoints (a killed run continues exactly
where it stopped), a guard that skips NaN/Inf steps, gradient-norm monitoring and clipping, a warm-up + cosine
learning-rate schedule, per-group parameter lists, and TensorBoard loggers for learning rates and learned loss
weights.

All handlers have an ``attach(engine)`` method, so they go into MONAI's ``SupervisedTrainer(train_handlers=[...])``
list (``train#handlers`` in configs/train.yaml). MONAI attaches the handlers in list order and Ignite calls the
handlers of one event in the order they were attached, which matters here:

* ``NonFiniteGuard`` must come **before** ``GradientMonitor``: both run at ``IterationEvents.BACKWARD_COMPLETED``
  (between ``loss.backward()`` and ``optimizer.step()``), and the guard must drop a NaN step's gradients before
  the monitor measures and clips them.
* ``ResumableCheckpoint`` must come **after** ``LrScheduleHandler`` and ``ValidationHandler`` (best: last), so
  that the checkpoint written at ``EPOCH_COMPLETED`` already holds the stepped learning-rate schedule; listed
  earlier, a resumed run would step the schedule once too few.
"""

from __future__ import annotations

import logging
import math
import os
import random
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

__all__ = [
    "WarmupCosine",
    "atomic_torch_save",
    "ResumableCheckpoint",
    "GradientMonitor",
    "NonFiniteGuard",
    "warmup_cosine_schedule",
    "param_groups",
    "LearningRateLogger",
    "LossWeightLogger",
]

logger = logging.getLogger(__name__)

#: keys of a ResumableCheckpoint file besides the ``save_dict`` objects
_RESERVED_KEYS = ("epoch", "iteration", "epoch_length", "max_epochs", "rng_states", "data_rng_states",
                  "data_batches_fetched", "grad_scaler")


# ---------------------------------------------------------------------------------------------------- atomic save
def _is_main_process() -> bool:
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``.

    The object is written to a temporary file in the same folder (``<name>.<random>.tmp``), flushed and
    ``fsync``-ed, then moved over ``path`` with ``os.replace`` (atomic on POSIX and Windows) and the folder is
    ``fsync``-ed so the rename itself survives a power cut. A reader therefore sees either the previous file or the
    complete new one. On any error the temporary file is removed and the error re-raised; a process killed
    mid-write can leave a ``.tmp`` file, which ``ResumableCheckpoint`` removes when the next run starts.

    Args:
        obj: anything ``torch.save`` accepts.
        path: the destination file; its folder is created if needed.
    """
    path = os.path.abspath(os.fspath(path))
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; keep the usual permissions of torch.save
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if hasattr(os, "O_DIRECTORY"):  # POSIX: make the rename durable
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError:
            pass


def _remove_stale_temps(path: str) -> list[str]:
    """Remove ``<name>.*.tmp`` files that a killed ``atomic_torch_save`` of ``path`` left behind."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = []
    if not os.path.isdir(folder):
        return removed
    for entry in os.listdir(folder):
        if entry.startswith(name + ".") and entry.endswith(".tmp"):
            try:
                os.unlink(os.path.join(folder, entry))
                removed.append(entry)
            except OSError:
                pass
    return removed


# ------------------------------------------------------------------------------------------------------ RNG states
def _np_state_to_torch(state: tuple) -> tuple:
    """numpy ``RandomState.get_state()`` as tensors/ints/floats, so ``torch.load(weights_only=True)`` reads it."""
    name, keys, pos, has_gauss, cached = state
    return (str(name), torch.from_numpy(np.asarray(keys).astype(np.int64)), int(pos), int(has_gauss), float(cached))


def _np_state_from_torch(state: Sequence) -> tuple:
    name, keys, pos, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached))


def _find_randomizables(dataset: Any, max_depth: int = 12) -> list[Any]:
    """MONAI ``Randomizable`` objects (each with its own ``numpy.random.RandomState`` ``R``) inside the dataset's
    transforms, in a fixed traversal order. With ``num_workers=0`` they draw in the main process, so their states
    belong to the run's RNG state just like the global generators."""
    from monai.transforms import Randomizable

    roots, obj = [], dataset
    for _ in range(5):  # Subset / wrappers: follow .dataset
        if obj is None:
            break
        if getattr(obj, "transform", None) is not None:
            roots.append(obj.transform)
        obj = getattr(obj, "dataset", None)
    found: list[Any] = []
    seen: set[int] = set()

    def walk(o: Any, depth: int) -> None:
        if depth > max_depth or id(o) in seen or isinstance(o, (torch.Tensor, np.ndarray, str, bytes, int, float)):
            return
        seen.add(id(o))
        if isinstance(o, Randomizable) and isinstance(getattr(o, "R", None), np.random.RandomState):
            found.append(o)
        if isinstance(o, (list, tuple)):
            children: Iterable = o
        elif isinstance(o, dict):
            children = o.values()
        elif hasattr(o, "__dict__") and not isinstance(o, (torch.nn.Module, type)):
            children = [v for k, v in vars(o).items() if not k.startswith("__")]
        else:
            return
        for child in children:
            walk(child, depth + 1)

    for root in roots:
        walk(root, 0)
    return found


class _RngSources:
    """Every random generator that decides a training run: torch (CPU and CUDA), numpy, python ``random``, the
    data loader's and its sampler's ``torch.Generator`` and the MONAI random transforms of the dataset."""

    def __init__(self, data_loader: Any = None):
        self.loader_generator = getattr(data_loader, "generator", None)
        sampler = getattr(data_loader, "sampler", None)
        gen = getattr(sampler, "generator", None)
        self.sampler_generator = gen if gen is not None and gen is not self.loader_generator else None
        dataset = getattr(data_loader, "dataset", None)
        self.transforms = _find_randomizables(dataset) if dataset is not None else []

    def get(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": _np_state_to_torch(np.random.get_state()),
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "loader_generator": None if self.loader_generator is None else self.loader_generator.get_state(),
            "sampler_generator": None if self.sampler_generator is None else self.sampler_generator.get_state(),
            "transforms": [_np_state_to_torch(t.R.get_state()) for t in self.transforms],
        }
        return state

    def set(self, state: Mapping[str, Any]) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(_np_state_from_torch(state["numpy"]))
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        cuda = state.get("cuda")
        if cuda is not None and torch.cuda.is_available():
            if len(cuda) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(cuda)
            else:
                logger.warning("checkpoint has CUDA RNG states for %d devices, this machine %d: not restored.",
                               len(cuda), torch.cuda.device_count())
        for key in ("loader_generator", "sampler_generator"):
            gen, saved = getattr(self, key), state.get(key)
            if gen is not None and saved is not None:
                gen.set_state(saved)
        saved_tf = state.get("transforms") or []
        if len(saved_tf) == len(self.transforms):
            for t, s in zip(self.transforms, saved_tf):
                t.R.set_state(_np_state_from_torch(s))
        else:
            logger.warning("checkpoint has %d random-transform states, the dataset %d: transforms not restored.",
                           len(saved_tf), len(self.transforms))


class _CountingIterator:
    """The data iterator of one pass over the loader, counting the batches fetched from it."""

    def __init__(self, it: Iterator, start_rng: dict[str, Any], fetched: int = 0):
        self.it = it
        self.start_rng = start_rng
        self.fetched = fetched
        self.exhausted = False

    def __iter__(self) -> _CountingIterator:
        return self

    def __next__(self) -> Any:
        try:
            batch = next(self.it)
        except StopIteration:
            self.exhausted = True
            raise
        self.fetched += 1
        return batch


class _ReplayableLoader:
    """Stands in for the data in ``engine.state.dataloader``. It records the RNG state at the moment each data
    iterator is created (that state decides the shuffle order and the workers' seeds) and counts the batches
    fetched from it; after a resume it rebuilds the interrupted iterator from that state and fetches and drops
    the batches already trained on, so the data order and augmentations continue exactly."""

    def __init__(self, loader: Any, owner: ResumableCheckpoint):
        self.loader = loader
        self.owner = owner

    def __len__(self) -> int:
        return len(self.loader)

    def __getattr__(self, name: str) -> Any:
        if name in ("loader", "owner"):  # not yet set: avoid recursing
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __iter__(self) -> _CountingIterator:
        owner, rng = self.owner, self.owner._rng
        assert rng is not None
        pending, owner._pending_replay = owner._pending_replay, None
        if pending is None:
            start = rng.get()
            owner._data_iter = _CountingIterator(iter(self.loader), start)
            return owner._data_iter
        start, saved, skip = pending
        rng.set(start)
        it = iter(self.loader)
        for _ in range(skip):  # fetching the batches replays exactly the RNG draws the killed run made
            next(it)
        rng.set(saved)
        owner._data_iter = _CountingIterator(it, start, fetched=skip)
        return owner._data_iter

    def finish_pass(self) -> None:
        """At an epoch end that consumed the whole loader, run the iterator into its ``StopIteration`` now (ignite
        does it when the next epoch starts). Exhausting a shuffling sampler draws from the loader's generator, so
        it must happen before the checkpoint records the RNG states."""
        it = self.owner._data_iter
        try:
            n = len(self.loader)
        except TypeError:
            return
        if it is None or it.exhausted or it.fetched < n:
            return
        try:
            next(it)
        except StopIteration:
            return
        raise RuntimeError(f"the data loader yielded more than its length ({n}) batches.")


# ------------------------------------------------------------------------------------------ resumable checkpoints
class ResumableCheckpoint:
    """Save everything needed to continue a run, atomically, at every epoch end (and every N iterations); with
    ``resume=True`` continue from that file when the trainer starts.

    The file holds ``{name: obj.state_dict()}`` for ``save_dict``, the trainer's ``epoch`` / ``iteration`` /
    ``epoch_length``, the ``GradScaler`` state when the trainer uses one, and the RNG states (torch, CUDA, numpy,
    python ``random``, the data loader's and sampler's generators, the MONAI random transforms of the dataset).
    A run killed at any moment and resumed gives the same weights as an uninterrupted run (bit-identical, with
    ``num_workers=0`` in the tests and with 2 non-persistent workers when checked by hand) as long as all
    randomness comes from these sources. Mid-epoch, the interrupted pass's data iterator is rebuilt from the RNG
    state recorded when it was created and the batches already trained on are fetched and dropped, which also
    replays the augmentation draws (worker processes are seeded from that state). Not with
    ``persistent_workers=True``: persistent workers carry private RNG streams across epochs, so a resumed run
    trains correctly but draws other augmentations than the uninterrupted run would have.

    The validator's best metric and the early-stopping counter are saved when ``save_dict`` holds a
    :class:`bundle.engine.ValidationState`, the time budget's clock when it holds the
    :class:`bundle.engine.TimeBudget` (otherwise a resumed run starts those afresh).

    List it after ``LrScheduleHandler`` and ``ValidationHandler`` (best: last in ``train_handlers``) so the epoch
    checkpoint is written after the learning-rate schedule has stepped.

    Args:
        save_dir: folder of the checkpoint file (created if needed).
        save_dict: objects with ``state_dict()`` / ``load_state_dict()``, as for MONAI's ``CheckpointSaver``, e.g.
            ``{"model": net, "optimizer": opt, "lr_scheduler": sched, "loss": loss}``.
        filename: the checkpoint file name, overwritten at every save.
        resume: on ``Events.STARTED`` load the file if it exists (else log that the run starts fresh).
        save_interval_iterations: also save every N iterations (0: only at epoch ends). Iterations that end an
            epoch are saved by the epoch-end save instead, after the schedule has stepped.
        optional: keys of ``save_dict`` that a checkpoint may lack (one written before they were saved): their
            objects keep their fresh state and a warning names them; any other missing key stops the resume.
    """

    def __init__(
        self,
        save_dir: str | os.PathLike,
        save_dict: Mapping[str, Any],
        filename: str = "checkpoint_last.pt",
        resume: bool = False,
        save_interval_iterations: int = 0,
        optional: Sequence[str] = (),
    ):
        if not save_dict:
            raise ValueError("save_dict should name at least one object to save.")
        for key, obj in save_dict.items():
            if key in _RESERVED_KEYS:
                raise ValueError(f"save_dict key {key!r} is reserved; reserved keys are {_RESERVED_KEYS}.")
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise ValueError(f"save_dict[{key!r}] ({type(obj).__name__}) has no state_dict/load_state_dict.")
        if save_interval_iterations < 0:
            raise ValueError(f"save_interval_iterations should be >= 0, got {save_interval_iterations}.")
        if not filename or os.path.basename(filename) != filename:
            raise ValueError(f"filename should be a plain file name, got {filename!r}.")
        self.save_dir = os.fspath(save_dir)
        self.save_dict = dict(save_dict)
        self.filename = filename
        self.resume = bool(resume)
        self.save_interval_iterations = int(save_interval_iterations)
        self.optional = set(optional)
        unknown = sorted(self.optional - set(self.save_dict))
        if unknown:
            raise ValueError(f"optional names {unknown}, which save_dict lacks; save_dict has {sorted(self.save_dict)}.")
        self._rng: _RngSources | None = None
        self._data_iter: _CountingIterator | None = None
        self._pending_replay: tuple[dict, dict, int] | None = None

    @property
    def path(self) -> str:
        """Full path of the checkpoint file."""
        return os.path.join(self.save_dir, self.filename)

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.STARTED, self.started)
        if self.save_interval_iterations > 0:
            engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.save_interval_iterations),
                                     self._iteration_save)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    # -------------------------------------------------------------------------------------------- saving
    def checkpoint(self, engine: Any) -> dict[str, Any]:
        """The dictionary written to the file for the engine's current state."""
        if self._rng is None:
            self._rng = _RngSources(getattr(engine, "data_loader", None))
        state = engine.state
        ckpt: dict[str, Any] = {name: obj.state_dict() for name, obj in self.save_dict.items()}
        ckpt.update(
            epoch=int(state.epoch),
            iteration=int(state.iteration),
            epoch_length=None if state.epoch_length is None else int(state.epoch_length),
            max_epochs=None if state.max_epochs is None else int(state.max_epochs),
            rng_states=self._rng.get(),
        )
        # where the current pass over the data stands: replayed on resume unless it is finished
        it = self._data_iter
        in_progress = it is not None and not it.exhausted and it.fetched > 0
        ckpt["data_rng_states"] = it.start_rng if in_progress else None  # type: ignore[union-attr]
        ckpt["data_batches_fetched"] = it.fetched if in_progress else 0  # type: ignore[union-attr]
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and getattr(engine, "amp", False):
            ckpt["grad_scaler"] = scaler.state_dict()
        return ckpt

    def save(self, engine: Any) -> None:
        """``EPOCH_COMPLETED``: write the checkpoint atomically."""
        if isinstance(engine.state.dataloader, _ReplayableLoader):
            engine.state.dataloader.finish_pass()
        if _is_main_process():  # under DDP every rank loads the checkpoint, only rank 0 writes it
            atomic_torch_save(self.checkpoint(engine), self.path)

    def _iteration_save(self, engine: Any) -> None:
        length = engine.state.epoch_length
        if length and engine.state.iteration % length == 0:
            return  # the epoch-end save follows, after the schedule has stepped
        if _is_main_process():
            atomic_torch_save(self.checkpoint(engine), self.path)

    # ----------------------------------------------------------------------------------------- resuming
    def started(self, engine: Any) -> None:
        """``Events.STARTED``: remove stale temporary files, install the data-order recorder, resume if asked."""
        removed = _remove_stale_temps(self.path)
        if removed:
            logger.info("removed %d unfinished checkpoint file(s) of a killed run: %s", len(removed), removed)
        self._rng = _RngSources(getattr(engine, "data_loader", None))
        self._data_iter, self._pending_replay = None, None
        if engine.state.dataloader is not None and not isinstance(engine.state.dataloader, _ReplayableLoader):
            engine.state.dataloader = _ReplayableLoader(engine.state.dataloader, self)
        if not self.resume:
            return
        if not os.path.isfile(self.path):
            logger.info("no checkpoint at %s, starting fresh", self.path)
            return
        self.load(engine)

    def load(self, engine: Any) -> None:
        """Restore the objects, RNG states and the trainer's epoch/iteration from the checkpoint file."""
        ckpt = torch.load(self.path, map_location="cpu", weights_only=True)
        absent = [k for k in self.save_dict if k not in ckpt]
        missing = [k for k in absent if k not in self.optional]
        if missing:
            raise ValueError(f"checkpoint {self.path} lacks {missing}; it holds {sorted(ckpt)}.")
        if absent:
            logger.warning("checkpoint %s was written without %s (an older version): they start afresh.", self.path, absent)
        for name, obj in self.save_dict.items():
            if name in ckpt:
                obj.load_state_dict(ckpt[name])
        scaler = getattr(engine, "scaler", None)
        if scaler is not None and getattr(engine, "amp", False) and ckpt.get("grad_scaler") is not None:
            scaler.load_state_dict(ckpt["grad_scaler"])

        epoch, iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        saved_length, length = ckpt.get("epoch_length"), engine.state.epoch_length
        done_in_epoch = 0
        if length is None or saved_length is None:
            completed_epochs = epoch
        elif int(saved_length) != int(length):
            completed_epochs = iteration // int(saved_length)
            logger.warning(
                "checkpoint %s was written with %s iterations per epoch, the data now gives %s: restarting epoch "
                "%d from its first batch.", self.path, saved_length, length, completed_epochs + 1)
            iteration = completed_epochs * int(length)
        else:
            completed_epochs, done_in_epoch = divmod(iteration, int(length))
        # ignite increments the epoch when it starts the next one, and starts it at iteration % epoch_length
        engine.state.epoch = completed_epochs
        engine.state.iteration = iteration

        fetched, data_rng = int(ckpt.get("data_batches_fetched") or 0), ckpt.get("data_rng_states")
        length_changed = saved_length is not None and length is not None and int(saved_length) != int(length)
        replay = (fetched > 0 and data_rng is not None and not length_changed
                  and isinstance(engine.state.dataloader, _ReplayableLoader))
        if replay:  # the RNG states are set when ignite creates the data iterator, after the replay
            self._pending_replay = (data_rng, ckpt["rng_states"], fetched)
        else:
            if done_in_epoch:
                logger.warning("checkpoint %s has no data-order state: epoch %d continues with a fresh data order.",
                               self.path, completed_epochs + 1)
            self._rng.set(ckpt["rng_states"])  # type: ignore[union-attr]

        msg = f"resuming from {self.path}: epoch {ckpt['epoch']}, iteration {ckpt['iteration']}"
        if done_in_epoch:
            msg += f" ({done_in_epoch} of {length} iterations of epoch {completed_epochs + 1} done)"
        if replay:
            msg += f"; replaying the data order, skipping {fetched} batches"
        logger.info(msg)
        max_epochs = engine.state.max_epochs
        if max_epochs is not None and completed_epochs >= max_epochs:
            logger.warning("checkpoint %s already completed %d epochs >= max_epochs=%d: nothing left to train.",
                           self.path, completed_epochs, max_epochs)


# ------------------------------------------------------------------------------------------------ gradient checks
def _optimizer_will_step(engine: Any) -> bool:
    """Whether ``SupervisedTrainer._iteration`` calls ``optimizer.step()`` in this iteration (gradient
    accumulation steps only every ``accumulation_steps`` iterations and at the end of an epoch)."""
    acc = int(getattr(engine, "accumulation_steps", 1) or 1)
    if acc <= 1:
        return True
    length = engine.state.epoch_length
    if length is not None:
        local = (engine.state.iteration - 1) % length
        return (local + 1) % acc == 0 or (local + 1) == length
    return engine.state.iteration % acc == 0


def _uses_grad_scaler(engine: Any) -> bool:
    scaler = getattr(engine, "scaler", None)
    return bool(getattr(engine, "amp", False)) and scaler is not None and scaler.is_enabled()


def _trained_parameters(engine: Any) -> list[torch.nn.Parameter]:
    """The optimiser's parameters (which may include e.g. a loss's learned weights) plus the network's, once."""
    params: list[torch.nn.Parameter] = []
    seen: set[int] = set()
    optimizer = getattr(engine, "optimizer", None)
    groups = optimizer.param_groups if optimizer is not None else []
    network = getattr(engine, "network", None)
    candidates = [p for g in groups for p in g["params"]]
    if network is not None:
        candidates += list(network.parameters())
    for p in candidates:
        if id(p) not in seen:
            seen.add(id(p))
            params.append(p)
    return params


def _norm(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    if not grads:
        return torch.zeros(())
    # parameters may sit on several devices (a loss with learned weights on the CPU, the network on a GPU)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().float()).cpu() for g in grads]))


class _WriterOwner:
    """A TensorBoard ``SummaryWriter`` given, or created from ``log_dir`` on attach and closed at the end."""

    def _init_writer(self, summary_writer: Any, log_dir: str | os.PathLike | None, required: bool) -> None:
        if required and summary_writer is None and log_dir is None:
            raise ValueError(f"{type(self).__name__} needs a summary_writer or a log_dir.")
        self.writer = summary_writer
        self.log_dir = None if log_dir is None else os.fspath(log_dir)
        self._own_writer = False

    def _attach_writer(self, engine: Any) -> None:
        from ignite.engine import Events

        if self.writer is None and self.log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=self.log_dir)
            self._own_writer = True
        if self.writer is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, lambda _: self.writer.flush())
            if self._own_writer:
                engine.add_event_handler(Events.COMPLETED, lambda _: self.writer.close())

    def _write(self, scalars: Mapping[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in scalars.items():
                self.writer.add_scalar(tag, value, step)


class GradientMonitor(_WriterOwner):
    """Measure (and optionally clip) the gradients between ``loss.backward()`` and ``optimizer.step()``.

    At MONAI's ``IterationEvents.BACKWARD_COMPLETED`` it computes the global gradient L2 norm of everything the
    optimiser trains, and one norm per top-level module of ``engine.network`` (``named_children()``, or the given
    ``modules``; children without parameters are left out and optimiser parameters outside the network are
    reported as ``other``). The global norm goes to
    ``engine.state.metrics[tag_prefix]``, all norms to ``engine.state.grad_norms`` and ``self.last_norms`` (norms
    before clipping), and to TensorBoard as ``<tag_prefix>/total`` and ``<tag_prefix>/<module>`` every
    ``log_every`` iterations. With ``max_norm`` the gradients are clipped with ``clip_grad_norm_``.

    With a MONAI ``GradScaler`` (``amp=True``) the gradients are unscaled first (``scaler.unscale_``), so norms
    and clipping are in true units. With gradient accumulation only iterations that step the optimiser are
    measured. List it after ``NonFiniteGuard``: a step the guard dropped has no gradients and is ignored here.

    Args:
        max_norm: clip the global gradient norm to this value; None: measure only.
        log_every: write to TensorBoard every N iterations.
        tag_prefix: metric and TensorBoard tag prefix.
        modules: names (dotted paths allowed, e.g. ``"model.1"``) of the network's submodules to report;
            default: its top-level children.
        summary_writer: a ``torch.utils.tensorboard.SummaryWriter`` (or anything with ``add_scalar``).
        log_dir: create a ``SummaryWriter`` here when ``summary_writer`` is not given (neither: no TensorBoard).
    """

    def __init__(
        self,
        max_norm: float | None = None,
        log_every: int = 10,
        tag_prefix: str = "grad_norm",
        modules: Sequence[str] | None = None,
        summary_writer: Any = None,
        log_dir: str | os.PathLike | None = None,
    ):
        if max_norm is not None and not max_norm > 0:
            raise ValueError(f"max_norm should be positive or None, got {max_norm}.")
        if log_every < 1:
            raise ValueError(f"log_every should be >= 1, got {log_every}.")
        self.max_norm = None if max_norm is None else float(max_norm)
        self.log_every = int(log_every)
        self.tag_prefix = tag_prefix
        self.modules = None if modules is None else [str(m) for m in modules]
        self._init_writer(summary_writer, log_dir, required=False)
        self.last_norms: dict[str, float] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(Events.STARTED, self._check)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)
        self._attach_writer(engine)

    def _check(self, engine: Any) -> None:
        """``Events.STARTED`` (MONAI sets ``engine.network`` after attaching the handlers): check the names."""
        network = getattr(engine, "network", None)
        if network is None:
            raise ValueError("GradientMonitor needs an engine with a `network` (MONAI's SupervisedTrainer).")
        for name in self.modules or []:
            try:
                network.get_submodule(name)
            except AttributeError:
                raise ValueError(f"GradientMonitor: the network has no submodule {name!r}.") from None

    def _groups(self, network: torch.nn.Module) -> list[tuple[str, list[torch.nn.Parameter]]]:
        if self.modules is None:
            groups = [(name, list(m.parameters())) for name, m in network.named_children()]
            return [(name, params) for name, params in groups if params]  # no ReLU / Dropout rows
        return [(name, list(network.get_submodule(name).parameters())) for name in self.modules]

    def __call__(self, engine: Any) -> None:
        if not _optimizer_will_step(engine):
            return
        params = [p for p in _trained_parameters(engine) if p.grad is not None]
        if not params:  # e.g. NonFiniteGuard dropped this step
            return
        if _uses_grad_scaler(engine):
            engine.scaler.unscale_(engine.optimizer)
        total = _norm([p.grad for p in params])
        norms = {"total": float(total)}
        network_ids: set[int] = set()
        for name, group in self._groups(engine.network):
            network_ids.update(id(p) for p in group)
            norms[name] = float(_norm([p.grad for p in group if p.grad is not None]))
        if self.modules is None:
            network_ids.update(id(p) for p in engine.network.parameters())
            other = [p.grad for p in params if id(p) not in network_ids]
            if other:
                norms["other"] = float(_norm(other))
        if self.max_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.max_norm)
        self.last_norms = norms
        engine.state.metrics[self.tag_prefix] = norms["total"]
        engine.state.grad_norms = dict(norms)
        if engine.state.iteration % self.log_every == 0:
            self._write({f"{self.tag_prefix}/{k}": v for k, v in norms.items()}, engine.state.iteration)


class NonFiniteGuard:
    """Skip optimiser steps whose loss or gradients are NaN/Inf, and stop a run that keeps producing them.

    At MONAI's ``IterationEvents.BACKWARD_COMPLETED`` (``SupervisedTrainer`` fires it after ``loss.backward()``
    and before ``optimizer.step()``, in the amp branch too) it checks ``engine.state.output["loss"]`` (still the
    un-decollated dict there) and every gradient. On a non-finite step it sets every trained parameter's ``.grad``
    to None, so the following ``optimizer.step()`` leaves those parameters untouched (torch optimisers skip
    parameters without gradients: no update, no weight decay, no change to their moments), logs a warning with
    epoch and iteration and counts it in ``engine.state.nonfinite_steps``. After ``max_consecutive`` non-finite
    steps in a row it raises ``RuntimeError``.

    With a MONAI ``GradScaler`` (``amp=True``) Inf gradients are the scaler's normal overflow signal and the
    scaler itself skips such steps, so only the loss is checked and the gradients are left to the scaler (a NaN
    loss gives NaN gradients, which makes ``scaler.step`` skip the step). With gradient accumulation a
    non-finite micro-batch drops the gradients accumulated so far in its window.

    List it before ``GradientMonitor`` in ``train_handlers`` so dropped gradients are never measured or clipped.

    Args:
        max_consecutive: raise after this many non-finite steps in a row.
    """

    def __init__(self, max_consecutive: int = 5):
        if max_consecutive < 1:
            raise ValueError(f"max_consecutive should be >= 1, got {max_consecutive}.")
        self.max_consecutive = int(max_consecutive)
        self.consecutive = 0

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events
        from monai.engines.utils import IterationEvents

        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(IterationEvents.BACKWARD_COMPLETED, self)

    def _reset(self, engine: Any) -> None:
        self.consecutive = 0
        if not isinstance(getattr(engine.state, "nonfinite_steps", None), int):
            engine.state.nonfinite_steps = 0

    @staticmethod
    def _loss(engine: Any) -> torch.Tensor | None:
        from monai.utils import CommonKeys

        out = engine.state.output
        loss = out.get(CommonKeys.LOSS) if isinstance(out, Mapping) else out
        if loss is None:
            return None
        return loss.detach() if isinstance(loss, torch.Tensor) else torch.as_tensor(float(loss))

    def __call__(self, engine: Any) -> None:
        loss = self._loss(engine)
        loss_ok = loss is None or bool(torch.isfinite(loss).all())
        scaler = _uses_grad_scaler(engine)
        params = _trained_parameters(engine)
        grads_ok = True
        if not scaler:
            by_device: dict[torch.device, list[torch.Tensor]] = {}
            for p in params:
                if p.grad is not None:
                    by_device.setdefault(p.grad.device, []).append(torch.isfinite(p.grad).all())
            grads_ok = all(bool(torch.stack(flags).all()) for flags in by_device.values())
        if loss_ok and grads_ok:
            self.consecutive = 0
            return
        if not scaler:
            for p in params:
                p.grad = None
        self.consecutive += 1
        engine.state.nonfinite_steps = int(getattr(engine.state, "nonfinite_steps", 0) or 0) + 1
        what = "loss" if not loss_ok else "gradients"
        epoch, iteration = engine.state.epoch, engine.state.iteration
        value = "" if loss is None or loss.numel() != 1 else f" (loss={float(loss)})"
        logger.warning(
            "non-finite %s%s at epoch %d iteration %d: optimizer step skipped (%d in a row, %d in total).",
            what, value, epoch, iteration, self.consecutive, engine.state.nonfinite_steps)
        if self.consecutive >= self.max_consecutive:
            raise RuntimeError(
                f"{what} was NaN/Inf for {self.consecutive} steps in a row at epoch {epoch} iteration {iteration}: "
                "lower the learning rate or check the data")


# ----------------------------------------------------------------------------------- schedule and parameter groups
class WarmupCosine:
    """The learning-rate factor of :func:`warmup_cosine_schedule` at an epoch. A callable object rather than a
    closure so that ``LambdaLR.state_dict`` saves it, and so that :class:`bundle.engine.TimeBudget` can change
    ``total`` once it knows how many epochs fit the time budget."""

    def __init__(self, warmup: int, total: int, floor: float):
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / (self.warmup + 1)
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_epochs: int, max_epochs: int, min_lr_ratio: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay, stepped once per epoch (``LrScheduleHandler``'s default).

    The factor on each group's initial lr after ``e`` steps (``e = epoch - 1`` during epoch ``epoch``) is
    ``(e + 1) / (warmup_epochs + 1)`` for ``e < warmup_epochs`` and then
    ``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * (e - warmup_epochs) / (max_epochs - warmup_epochs))) / 2``,
    which is 1 at ``e = warmup_epochs`` and ``min_lr_ratio`` at ``e = max_epochs`` (held after that).

    Args:
        optimizer: the optimiser; every param group is scaled by the same factor.
        warmup_epochs: epochs of linear warm-up (0: none).
        max_epochs: total epochs; must exceed ``warmup_epochs``.
        min_lr_ratio: final lr as a fraction of the initial lr, in [0, 1].
    """
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs should be >= 0, got {warmup_epochs}.")
    if max_epochs <= warmup_epochs:
        raise ValueError(f"max_epochs ({max_epochs}) should be larger than warmup_epochs ({warmup_epochs}).")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio should be in [0, 1], got {min_lr_ratio}.")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(int(warmup_epochs), int(max_epochs), float(min_lr_ratio)))


def param_groups(
    network: torch.nn.Module,
    lr: float,
    transformer_lr: float | None = None,
    weight_decay: float = 1e-4,
    extra_modules: Sequence[torch.nn.Module] | torch.nn.Module = (),
) -> list[dict[str, Any]]:
    """Optimiser parameter groups, each with a ``"name"`` (for per-group learning-rate logging).

    A network with ``transformer_parameters()`` and ``cnn_parameters()`` (MAHT-Net) gives a ``"cnn"`` group at
    ``lr`` and a ``"transformer"`` group at ``transformer_lr`` (default ``lr``); any other network one
    ``"network"`` group. Parameters of ``extra_modules`` (e.g. a loss with learned weights) form an ``"extra"``
    group at ``lr`` without weight decay. Frozen parameters (``requires_grad=False``) and empty groups are left
    out.

    Args:
        network: the network.
        lr: learning rate of the network (CNN) parameters and of the extra group.
        transformer_lr: learning rate of the transformer parameters; None: ``lr``.
        weight_decay: weight decay of the network groups.
        extra_modules: modules (or one module) whose parameters are trained without weight decay.
    """
    if not lr > 0:
        raise ValueError(f"lr should be positive, got {lr}.")
    if transformer_lr is not None and not transformer_lr > 0:
        raise ValueError(f"transformer_lr should be positive or None, got {transformer_lr}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay should be >= 0, got {weight_decay}.")
    if isinstance(extra_modules, torch.nn.Module):
        extra_modules = [extra_modules]

    seen: set[int] = set()

    def take(params: Iterable[torch.nn.Parameter], what: str) -> list[torch.nn.Parameter]:
        out = []
        for p in params:
            if not p.requires_grad:
                continue
            if id(p) in seen:
                raise ValueError(f"a parameter of the {what} group is already in another group.")
            seen.add(id(p))
            out.append(p)
        return out

    groups: list[dict[str, Any]] = []
    hybrid = all(callable(getattr(network, m, None)) for m in ("transformer_parameters", "cnn_parameters"))
    if hybrid:
        transformer = take(network.transformer_parameters(), "transformer")
        cnn = take(network.cnn_parameters(), "cnn")
        groups.append({"name": "cnn", "params": cnn, "lr": lr, "weight_decay": weight_decay})
        groups.append({"name": "transformer", "params": transformer, "lr": transformer_lr or lr,
                       "weight_decay": weight_decay})
        left = [p for p in network.parameters() if p.requires_grad and id(p) not in seen]
        if left:
            raise ValueError(f"{len(left)} network parameters are in neither transformer_parameters() nor "
                             "cnn_parameters().")
    else:
        groups.append({"name": "network", "params": take(network.parameters(), "network"), "lr": lr,
                       "weight_decay": weight_decay})
    extra = take((p for m in extra_modules for p in m.parameters()), "extra")
    groups.append({"name": "extra", "params": extra, "lr": lr, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


# ------------------------------------------------------------------------------------------------------- loggers
class LearningRateLogger(_WriterOwner):
    """Write each optimiser param group's learning rate to TensorBoard at the start of every epoch (the lr used
    during that epoch), tagged ``<tag_prefix>/<group name>`` (``group<i>`` for groups without a ``"name"``).

    Args:
        summary_writer: a ``SummaryWriter`` (or anything with ``add_scalar``).
        log_dir: create a ``SummaryWriter`` here when ``summary_writer`` is not given.
        optimizer: the optimiser; default ``engine.optimizer``.
        tag_prefix: TensorBoard tag prefix.
    """

    def __init__(self, summary_writer: Any = None, log_dir: str | os.PathLike | None = None,
                 optimizer: torch.optim.Optimizer | None = None, tag_prefix: str = "lr"):
        self._init_writer(summary_writer, log_dir, required=False)  # no writer: logs nothing (DDP ranks > 0)
        self.optimizer = optimizer
        self.tag_prefix = tag_prefix
        self.last_lrs: dict[str, float] = {}

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_STARTED, self)
        self._attach_writer(engine)

    def __call__(self, engine: Any) -> None:
        optimizer = self.optimizer if self.optimizer is not None else getattr(engine, "optimizer", None)
        if optimizer is None:
            raise ValueError("LearningRateLogger needs an optimizer (none given and the engine has none).")
        self.last_lrs = {str(g.get("name", f"group{i}")): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}
        self._write({f"{self.tag_prefix}/{k}": v for k, v in self.last_lrs.items()}, engine.state.epoch)


class LossWeightLogger(_WriterOwner):
    """Write a deep-supervision loss's per-head losses and learned weights to TensorBoard every N iterations.

    Uses ``loss.last_scale_losses`` (``<tag_prefix>/head<s>``) and, when the loss learns its weights
    (``log_vars``, e.g. ``HeatmapCrossEntropyLoss(learn_weights=True)``), ``exp(-log_vars)``
    (``<tag_prefix>/weight_head<s>``). A loss with neither writes nothing.

    Args:
        loss: the loss module.
        summary_writer: a ``SummaryWriter`` (or anything with ``add_scalar``).
        log_dir: create a ``SummaryWriter`` here when ``summary_writer`` is not given.
        log_every: write every N iterations.
        tag_prefix: TensorBoard tag prefix.
    """

    def __init__(self, loss: torch.nn.Module, summary_writer: Any = None, log_dir: str | os.PathLike | None = None,
                 log_every: int = 10, tag_prefix: str = "loss"):
        if log_every < 1:
            raise ValueError(f"log_every should be >= 1, got {log_every}.")
        self._init_writer(summary_writer, log_dir, required=False)  # no writer: logs nothing (DDP ranks > 0)
        self.loss = loss
        self.log_every = int(log_every)
        self.tag_prefix = tag_prefix

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.log_every), self)
        self._attach_writer(engine)

    def scalars(self) -> dict[str, float]:
        """The values written: per-head losses and learned weights."""
        out = {f"{self.tag_prefix}/head{s}": float(v) for s, v in enumerate(getattr(self.loss, "last_scale_losses", []))}
        log_vars = getattr(self.loss, "log_vars", None)
        if isinstance(log_vars, torch.Tensor):
            weights = torch.exp(-log_vars.detach().float().reshape(-1))
            out.update({f"{self.tag_prefix}/weight_head{s}": float(w) for s, w in enumerate(weights)})
        return out

    def __call__(self, engine: Any) -> None:
        self._write(self.scalars(), engine.state.iteration)
