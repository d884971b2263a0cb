"""The settings a network's weights only work with, written beside them by training and checked by inference.

A checkpoint holds weights, not the input they were trained on: weights trained at 400 x 320 run at inference.yaml's
800 x 640 without complaint (a U-Net) or fail with a tensor-shape message that names no setting (MAHT-Net), and a
refinement network trained on other crops reads the wrong ones. So training writes ``settings.json`` into its
output folder (``configs/train.yaml``'s ``model_settings``; ``configs/refine.yaml`` has its own), and inference and
evaluation compare it, when a checkpoint has one beside it, with their own settings before anything runs::

    {"kind": "global", "image_size": [400, 320], "network": "FlexibleUNet"}

A difference is an error that names the checkpoint, the setting, both values and the override that fixes it.
Weights without the file (the shipped ones, older runs) are not checked. A settings file of its own,
``NAME.settings.json`` beside ``NAME.pt``, takes precedence over the folder's ``settings.json`` (so one folder can
hold several networks' weights).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from .io import atomic_write_text

__all__ = ["network_name", "own_settings_path", "settings_path", "write_model_settings", "copy_model_settings",
           "check_model_settings"]

FILE_NAME = "settings.json"

#: how each setting is overridden on the command line, for the error message
OVERRIDES = {
    "image_size": "--image_size",
    "refine_spacing_mm": "--refine_spacing_mm",
    "crop_size": "--crop_size",
    "refine_context_factor": "--refine_context_factor",
}


def _plain(value):
    """JSON form: tuples and tensors as lists, other objects as their string."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _comparable(value):
    """The same with every number a float, so that 400 and 400.0 agree."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def network_name(network) -> str:
    """The class name of a network, with its backbone where it names one by a string (MONAI's ``FlexibleUNet``:
    ``"FlexibleUNet(efficientnet-lite0-swish)"``), since two backbones can share every weight's name and shape."""
    backbone = getattr(network, "backbone", None)
    name = type(network).__name__
    return f"{name}({backbone})" if isinstance(backbone, str) else name


def own_settings_path(ckpt_path: str | Path) -> Path:
    """A checkpoint's own settings file: ``NAME.settings.json`` beside ``NAME.pt``."""
    return Path(ckpt_path).with_suffix(".settings.json")


def settings_path(ckpt_path: str | Path) -> Path | None:
    """The settings file of a checkpoint: its own (:func:`own_settings_path`), else the folder's ``settings.json``;
    None when there is neither."""
    ckpt = Path(ckpt_path)
    for candidate in (own_settings_path(ckpt), ckpt.parent / FILE_NAME):
        if candidate.is_file():
            return candidate
    return None


def write_model_settings(output_dir: str | Path, settings: Mapping) -> Path:
    """Write ``settings`` (JSON values; tuples become lists) to ``output_dir/settings.json``, atomically."""
    path = Path(output_dir) / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(_plain(settings), indent=1) + "\n")
    return path


def copy_model_settings(run_dir: str | Path, ckpt_path: str | Path) -> Path | None:
    """Give the weights ``ckpt_path``, copied out of the training folder ``run_dir``, that run's settings as their own
    file (atomically); None when the run wrote none."""
    src = Path(run_dir) / FILE_NAME
    if not src.is_file():
        return None
    dst = own_settings_path(ckpt_path)
    atomic_write_text(dst, src.read_text())
    return dst


def check_model_settings(ckpt_paths: str | Path | Sequence[str | Path] | None, settings: Mapping) -> int:
    """Compare each checkpoint's settings file (:func:`settings_path`) with ``settings``, the run's own.

    Only the keys both have are compared (numbers as numbers: 400 is 400.0), after ``kind``: a global network's
    weights given where a refinement network's are expected, or the other way round, is an error too. Returns how
    many checkpoints had a settings file.

    Raises:
        ValueError: naming the checkpoint, its settings file, every setting that differs with both values, and
            the overrides that would match the weights.
    """
    if ckpt_paths is None:
        return 0
    if isinstance(ckpt_paths, (str, Path)):
        ckpt_paths = [ckpt_paths]
    mine = _plain(settings)
    checked = 0
    for ckpt in ckpt_paths:
        path = settings_path(ckpt)
        if path is None:
            continue
        try:
            theirs = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: the settings of the weights {ckpt} could not be read ({e}); delete the file to "
                             "run the weights unchecked.") from e
        if not isinstance(theirs, Mapping):
            raise ValueError(f"{path}: expected a JSON object of settings, got {type(theirs).__name__}.")
        checked += 1
        kind, their_kind = mine.get("kind"), theirs.get("kind")
        if kind and their_kind and kind != their_kind:
            raise ValueError(f"{ckpt}: these are a {their_kind} network's weights ({path}), given where the {kind} "
                             "network's are expected (ckpt_path / ensemble: the global network; refine_ckpt_path / "
                             "refine_ensemble: the refinement network).")
        wrong = [k for k in sorted(set(mine) & set(theirs))
                 if k != "kind" and _comparable(theirs[k]) != _comparable(mine[k])]
        if wrong:
            lines = [f"  {k}: trained with {json.dumps(theirs[k])}, this run uses {json.dumps(mine[k])}" for k in wrong]
            fixes = " ".join(f"{OVERRIDES[k]} \"{json.dumps(theirs[k])}\"" for k in wrong if k in OVERRIDES)
            other = [k for k in wrong if k not in OVERRIDES]
            hint = f"add {fixes}" if fixes else ""
            if other:
                hint += ("; " if hint else "") + (f"{', '.join(other)}: layer the network's config as in training "
                                                  "(e.g. configs/efficientnet_lite.yaml)")
            raise ValueError(f"{ckpt}: the weights do not match this run's settings ({path}):\n" + "\n".join(lines)
                             + f"\nTo run them as trained, {hint} (or delete {path.name} to run them unchecked).")
    return checked
