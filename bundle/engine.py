"""Small pieces for MONAI's Ignite engines that MONAI itself lacks: an inferer that runs under autocast on any
device (MONAI's ``amp`` flag is CUDA-only), and a progress bar that shows the running loss."""

from __future__ import annotations

from typing import Any, Callable

import torch
from monai.inferers import Inferer

__all__ = ["AutocastInferer", "TrainingProgressBar", "autocast_dtype"]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """``"bf16"`` -> ``torch.bfloat16``, ``"fp16"`` -> ``torch.float16``, ``"none"`` -> None."""
    table = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None, "fp32": None}
    if precision not in table:
        raise ValueError(f"precision should be one of bf16, fp16, none; got {precision!r}.")
    return table[precision]


class AutocastInferer(Inferer):
    """Run the network on the whole input, under ``torch.autocast`` when ``precision`` is bf16 or fp16.

    Outputs are cast back to float32 so losses, decoding and metrics always work in full precision.

    Args:
        precision: ``"bf16"``, ``"fp16"`` or ``"none"``.
        device: the device the network runs on (autocast needs its type).
    """

    def __init__(self, precision: str = "none", device: str | torch.device = "cpu"):
        super().__init__()
        self.dtype = autocast_dtype(precision)
        self.device_type = torch.device(device).type

    def __call__(self, inputs: torch.Tensor, network: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if self.dtype is None:
            return network(inputs, *args, **kwargs)
        with torch.autocast(device_type=self.device_type, dtype=self.dtype):
            out = network(inputs, *args, **kwargs)
        return out.float() if isinstance(out, torch.Tensor) else out


class TrainingProgressBar:
    """tqdm progress bar over each training epoch, showing the loss (ignite's ``ProgressBar`` with our output)."""

    def __init__(self, persist: bool = False):
        from ignite.handlers import ProgressBar

        self.bar = ProgressBar(persist=persist)

    def attach(self, engine) -> None:
        from monai.handlers import from_engine

        self.bar.attach(engine, output_transform=lambda out: {"loss": from_engine(["loss"], first=True)(out)})
