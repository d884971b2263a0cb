"""MAHT-Net: a multi-scale attention hybrid CNN-Transformer network for anatomical landmark heatmap regression.

The network is composed from ``monai.networks.blocks`` in the style of ``monai.networks.nets``:

* a multi-scale residual CNN encoder (stem + ``len(channels)`` stride-2 stages of
  :py:class:`monai.networks.blocks.ResidualUnit`), each stage optionally followed by CBAM-style
  channel + spatial attention (:py:class:`SpatialChannelAttention`, built on
  :py:class:`monai.networks.blocks.ChannelSELayer`);
* a Vision-Transformer bottleneck on the deepest feature map (1x1 conv token projection, 2D positional
  encoding that adapts to the token grid size, a stack of :py:class:`monai.networks.blocks.TransformerBlock`);
* an FPN-style top-down decoder with lateral 1x1 connections, attention-gated skip connections
  (:py:class:`AttentionGate`) and heatmap heads at several scales (deep supervision).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from monai.networks.blocks import ChannelSELayer, Convolution, ResidualUnit, TransformerBlock

__all__ = ["MAHTNet", "SpatialChannelAttention", "AttentionGate", "PositionalEncoding2D", "TransformerBottleneck"]

_POS_EMBED_TYPES = ("learnable", "sincos", "none")


def _sincos_1d(length: int, dim: int, device: torch.device) -> torch.Tensor:
    """Fixed 1D sine-cosine encoding of the integer positions ``0..length-1``: a ``(dim, length)`` float32 tensor."""
    half = dim // 2
    omega = torch.arange(half, dtype=torch.float32, device=device) / float(half)
    omega = torch.exp(omega * (-math.log(10000.0)))
    pos = torch.arange(length, dtype=torch.float32, device=device)
    out = pos[:, None] * omega[None, :]  # (length, half)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).t()


class PositionalEncoding2D(nn.Module):
    """
    2D positional encoding added to a ``(B, hidden_size, h, w)`` token grid whose size may change between calls.

    Half of the channels encode the row, the other half the column. Two modes:

    * ``"learnable"``: a learned row table ``(hidden_size // 2, grid_size[0])`` and column table
      ``(hidden_size // 2, grid_size[1])`` at a reference grid size, initialised with sine-cosine values and
      linearly interpolated to the actual grid when it differs (as for ViT position-embedding interpolation, so
      positions are relative to the image extent).
    * ``"sincos"``: fixed sine-cosine encoding of the integer token positions, computed on the fly (no parameters;
      positions are absolute, in tokens).

    Args:
        hidden_size: number of channels of the token grid, divisible by 4.
        grid_size: reference token grid ``(h, w)`` used by the learnable tables.
        mode: ``"learnable"`` or ``"sincos"``. Defaults to ``"learnable"``.

    Raises:
        ValueError: if ``hidden_size`` is not a positive multiple of 4, ``grid_size`` is not two positive ints or
            ``mode`` is unknown.
    """

    __constants__ = ["learnable", "half"]

    def __init__(self, hidden_size: int, grid_size: Sequence[int], mode: str = "learnable") -> None:
        super().__init__()
        if hidden_size <= 0 or hidden_size % 4 != 0:
            raise ValueError(f"hidden_size must be a positive multiple of 4 (2D pos. encoding), got {hidden_size}.")
        if len(grid_size) != 2 or min(grid_size) < 1:
            raise ValueError(f"grid_size must be two positive ints, got {grid_size}.")
        if mode not in ("learnable", "sincos"):
            raise ValueError(f"mode must be 'learnable' or 'sincos', got {mode!r}.")
        self.learnable = mode == "learnable"
        self.half = hidden_size // 2
        if self.learnable:
            cpu = torch.device("cpu")
            self.row_embed = nn.Parameter(_sincos_1d(int(grid_size[0]), self.half, cpu)[None])
            self.col_embed = nn.Parameter(_sincos_1d(int(grid_size[1]), self.half, cpu)[None])
        else:
            self.register_buffer("row_embed", torch.zeros(1, self.half, 0), persistent=False)
            self.register_buffer("col_embed", torch.zeros(1, self.half, 0), persistent=False)

    def encoding(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The ``(1, hidden_size, h, w)`` float32 encoding of an ``h`` x ``w`` token grid."""
        if self.learnable:
            row = self.row_embed
            col = self.col_embed
            if row.shape[-1] != h:
                row = F.interpolate(row, size=[h], mode="linear", align_corners=False)
            if col.shape[-1] != w:
                col = F.interpolate(col, size=[w], mode="linear", align_corners=False)
        else:
            row = _sincos_1d(h, self.half, device)[None]
            col = _sincos_1d(w, self.half, device)[None]
        row = row[:, :, :, None].expand(-1, -1, h, w)
        col = col[:, :, None, :].expand(-1, -1, h, w)
        return torch.cat([row, col], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, hidden_size, h, w) -> ``x`` + encoding, same shape and dtype."""
        pos = self.encoding(x.shape[2], x.shape[3], x.device)
        return x + pos.to(x.dtype)


class SpatialChannelAttention(nn.Module):
    """
    CBAM-style attention ("Woo et al., CBAM: Convolutional Block Attention Module, https://arxiv.org/abs/1807.06521"):
    channel re-weighting by squeeze-and-excitation (:py:class:`monai.networks.blocks.ChannelSELayer`) followed by a
    spatial gate, ``sigmoid(conv_k([mean_c(x), max_c(x)]))``, multiplied onto every channel.

    Args:
        spatial_dims: number of spatial dimensions.
        channels: number of input (= output) channels.
        reduction: squeeze-and-excitation reduction ratio (clipped to ``channels``). Defaults to 8.
        kernel_size: kernel size of the spatial gate convolution. Defaults to 7.
    """

    def __init__(self, spatial_dims: int, channels: int, reduction: int = 8, kernel_size: int = 7) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"channels and reduction must be positive, got {channels} and {reduction}.")
        self.channel_gate = ChannelSELayer(spatial_dims=spatial_dims, in_channels=channels, r=min(reduction, channels))
        self.spatial_gate = Convolution(
            spatial_dims=spatial_dims, in_channels=2, out_channels=1, kernel_size=kernel_size, conv_only=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.channel_gate(x)
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.spatial_gate(pooled))


class AttentionGate(nn.Module):
    """
    Additive attention gate of "Oktay et al., Attention U-Net, https://arxiv.org/abs/1804.03999":
    ``x * sigmoid(psi(relu(W_g g + W_x x)))`` with ``g`` the gating (coarser, upsampled) signal and ``x`` the skip
    feature, both at the same spatial size.

    Equivalent to :py:class:`monai.networks.nets.attentionunet.AttentionBlock` except that the normalisation of
    ``W_g``/``W_x`` is configurable (that block hard-codes batch norm, poor at the small batches of landmark
    training) and ``psi`` has a bias instead of a normalisation of its single output channel.

    Args:
        spatial_dims: number of spatial dimensions.
        gate_channels: channels of ``g``.
        skip_channels: channels of ``x`` (and of the output).
        inter_channels: channels of the intermediate additive attention space.
        norm: normalisation of ``W_g`` and ``W_x``. Defaults to instance norm.
    """

    def __init__(
        self,
        spatial_dims: int,
        gate_channels: int,
        skip_channels: int,
        inter_channels: int,
        norm: tuple | str | None = "instance",
    ) -> None:
        super().__init__()
        self.w_g = Convolution(
            spatial_dims=spatial_dims,
            in_channels=gate_channels,
            out_channels=inter_channels,
            kernel_size=1,
            act=None,
            norm=norm,
            bias=False,
        )
        self.w_x = Convolution(
            spatial_dims=spatial_dims,
            in_channels=skip_channels,
            out_channels=inter_channels,
            kernel_size=1,
            act=None,
            norm=norm,
            bias=False,
        )
        self.psi = Convolution(
            spatial_dims=spatial_dims, in_channels=inter_channels, out_channels=1, kernel_size=1, conv_only=True
        )

    def forward(self, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        a = F.relu(self.w_g(g) + self.w_x(x))
        return x * torch.sigmoid(self.psi(a))


class TransformerBottleneck(nn.Module):
    """
    Vision-Transformer bottleneck on a CNN feature map: 1x1 conv to ``hidden_size`` tokens, 2D positional encoding,
    ``num_layers`` :py:class:`monai.networks.blocks.TransformerBlock` (pre-norm multi-head self-attention + MLP),
    a final LayerNorm, 1x1 conv back to ``in_channels`` and a residual connection to the input:
    ``(B, in_channels, h, w) -> (B, in_channels, h, w)`` for any ``h, w``.

    Args:
        spatial_dims: number of spatial dimensions (2).
        in_channels: channels of the CNN feature map.
        hidden_size: token dimension.
        mlp_dim: hidden dimension of the transformer MLP.
        num_layers: number of transformer blocks.
        num_heads: number of attention heads.
        grid_size: reference token grid ``(h, w)`` of the learnable positional encoding.
        dropout_rate: dropout of the transformer blocks and after the positional encoding. Defaults to 0.
        pos_embed: ``"learnable"``, ``"sincos"`` or ``"none"``. Defaults to ``"learnable"``.
        qkv_bias: bias of the qkv projection. Defaults to True.
        use_flash_attention: use ``torch.nn.functional.scaled_dot_product_attention``. Defaults to True.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        hidden_size: int,
        mlp_dim: int,
        num_layers: int,
        num_heads: int,
        grid_size: Sequence[int],
        dropout_rate: float = 0.0,
        pos_embed: str = "learnable",
        qkv_bias: bool = True,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        self.proj_in = Convolution(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=hidden_size, kernel_size=1, conv_only=True
        )
        self.pos_embed: nn.Module = (
            nn.Identity() if pos_embed == "none" else PositionalEncoding2D(hidden_size, grid_size, mode=pos_embed)
        )
        self.pos_drop = nn.Dropout(dropout_rate)
        self.blocks = nn.ModuleList(
            [
                TransformerBlock(
                    hidden_size=hidden_size,
                    mlp_dim=mlp_dim,
                    num_heads=num_heads,
                    dropout_rate=dropout_rate,
                    qkv_bias=qkv_bias,
                    save_attn=False,
                    use_flash_attention=use_flash_attention,
                )
                for _ in range(num_layers)
            ]
        )
        for blk in self.blocks:
            # without cross-attention MONAI still creates this LayerNorm but never uses it: drop its parameters so
            # that every parameter gets a gradient (DistributedDataParallel without find_unused_parameters)
            blk.norm_cross_attn = nn.Identity()
        self.dropout_rate = dropout_rate
        self.norm = nn.LayerNorm(hidden_size)
        self.proj_out = Convolution(
            spatial_dims=spatial_dims, in_channels=hidden_size, out_channels=in_channels, kernel_size=1, conv_only=True
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.pos_embed(self.proj_in(x))
        b, c, h, w = t.shape
        t = self.pos_drop(t.flatten(2).transpose(1, 2))  # (B, h*w, hidden), row-major token order
        for blk in self.blocks:
            t = blk(t)
        t = self.norm(t).transpose(1, 2).reshape(b, c, h, w)
        return x + self.proj_out(t)

    def train(self, mode: bool = True):
        # MONAI's SABlock passes ``dropout_p=self.dropout_rate`` to scaled_dot_product_attention also in eval mode:
        # zero it outside training so that eval outputs are deterministic with use_flash_attention=True.
        super().train(mode)
        for blk in self.blocks:
            blk.attn.dropout_rate = self.dropout_rate if mode else 0.0
        return self


class _DecoderLevel(nn.Module):
    """One FPN top-down step: project + upsample the coarser map, (gate +) laterally project the skip, add, refine."""

    __constants__ = ["use_gate"]

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        top_channels: int,
        out_channels: int,
        use_gate: bool,
        act: tuple | str | None,
        norm: tuple | str | None,
        subunits: int,
    ) -> None:
        super().__init__()
        self.use_gate = use_gate
        self.top_down = Convolution(
            spatial_dims=spatial_dims,
            in_channels=top_channels,
            out_channels=out_channels,
            kernel_size=1,
            conv_only=True,
        )
        self.gate: nn.Module = (
            AttentionGate(
                spatial_dims=spatial_dims,
                gate_channels=out_channels,
                skip_channels=skip_channels,
                inter_channels=max(skip_channels // 2, 1),
                norm=norm,
            )
            if use_gate
            else nn.Identity()
        )
        self.lateral = Convolution(
            spatial_dims=spatial_dims,
            in_channels=skip_channels,
            out_channels=out_channels,
            kernel_size=1,
            conv_only=True,
        )
        self.refine = ResidualUnit(
            spatial_dims=spatial_dims,
            in_channels=out_channels,
            out_channels=out_channels,
            subunits=subunits,
            act=act,
            norm=norm,
        )

    def forward(self, skip: torch.Tensor, top: torch.Tensor) -> torch.Tensor:
        top = F.interpolate(self.top_down(top), size=skip.shape[2:], mode="bilinear", align_corners=False)
        if self.use_gate:
            skip = self.gate(top, skip)
        return self.refine(self.lateral(skip) + top)


class MAHTNet(nn.Module):
    """
    MAHT-Net: multi-scale attention hybrid CNN-Transformer network for landmark heatmap regression on 2D images
    (e.g. cephalometric landmarks on lateral skull radiographs).

    Architecture (``n = len(channels)``, total stride ``2**n``)::

        x -> stem (3x3 conv, stem channels = channels[0] // 2, full resolution)  ---------------- skip 0
          -> stage 1 (ResidualUnit stride 2 [+ CBAM]) channels[0], 1/2  ------------------------ skip 1
          -> ...
          -> stage n (ResidualUnit stride 2 [+ CBAM]) channels[n-1], 1/2**n
          -> [Transformer bottleneck: 1x1 conv -> tokens + 2D pos. enc. -> TransformerBlock x num_layers -> 1x1
              conv, residual]
          -> FPN decoder, coarse to fine: upsample(1x1(top)) + 1x1(gate(skip)) -> ResidualUnit, at 1/2**(n-1) ... 1
          -> 1x1 heatmap head at full resolution [+ heads at 1/2, 1/4, ... for deep supervision]

    Input/output contract:

    * input ``(B, in_channels, H, W)``, any ``H, W >= 32`` (the input is zero-padded, centred, to a multiple of
      ``2**n`` - and to at least ``2 * 2**n`` - and the output is cropped back);
    * eval mode, or ``deep_supervision=False``: heatmap **logits** (no activation) ``(B, out_channels, H, W)``;
    * train mode with ``deep_supervision=True``: ``(B, 1 + deep_supr_num, out_channels, H, W)``, index 0 the
      full-resolution head, then the heads at 1/2, 1/4, ... upsampled bilinearly to ``(H, W)`` (like
      :py:class:`monai.networks.nets.DynUNet`); use ``torch.unbind(out, dim=1)`` to get the list.

    Args:
        in_channels: number of input channels.
        out_channels: number of landmarks (heatmap channels).
        channels: encoder channels per stage, each stage halves the resolution. Defaults to ``(32, 64, 128, 256)``
            (total stride 16). The decoder level at scale ``1/2**(i+1)`` uses ``channels[i]`` channels.
        spatial_dims: number of spatial dimensions; only 2 is supported. Defaults to 2.
        img_size: reference input size ``(H, W)``; only sets the grid of the learnable positional encoding
            (``ceil(img_size / 2**n)``), other sizes work by interpolation. Defaults to ``(512, 416)``.
        hidden_size: transformer token dimension, divisible by ``num_heads`` and by 4. Defaults to 256.
        num_layers: number of transformer blocks. Defaults to 4.
        num_heads: number of attention heads. Defaults to 8.
        mlp_dim: transformer MLP hidden dimension. Defaults to 1024.
        dropout_rate: dropout of the transformer (attention weights, MLP, outputs). Defaults to 0.0.
        pos_embed: positional encoding of the tokens: ``"learnable"`` (row/column tables at the ``img_size`` grid,
            interpolated), ``"sincos"`` (fixed, computed for the actual grid) or ``"none"``. Defaults to
            ``"learnable"``.
        qkv_bias: bias of the attention qkv projection. Defaults to True.
        use_transformer: if False the transformer bottleneck is removed (identity). Defaults to True.
        use_attention_gates: if False skip connections are not gated. Defaults to True.
        use_spatial_attention: if False no CBAM channel+spatial attention follows the encoder stages.
            Defaults to True.
        deep_supervision: add heatmap heads at coarser scales, returned in training mode. Defaults to False.
        deep_supr_num: number of extra (coarser) heads, ``1 <= deep_supr_num <= n - 1``; None means ``n - 1``.
            Only used when ``deep_supervision`` is True. Defaults to None.
        num_res_units: residual units per encoder stage (the first one strided). Defaults to 1.
        act: activation type and arguments. Defaults to leaky ReLU.
        norm: normalisation type and arguments. Defaults to affine instance norm.
        attention_reduction: squeeze-and-excitation reduction ratio of the CBAM blocks. Defaults to 8.
        use_flash_attention: use ``scaled_dot_product_attention`` in the transformer (about 2x faster and less
            memory on CPU at 512 x 416; :py:meth:`forward_with_attention` switches it off temporarily to read the
            attention weights). The attention dropout that MONAI's SABlock applies in that path also in eval mode
            is zeroed by ``eval()`` (eager; script the network in eval mode). Defaults to True.

    Raises:
        ValueError: on invalid arguments (see the checks in the constructor).

    Examples::

        # 19 ISBI cephalometric landmarks on single-channel radiographs, default configuration
        >>> net = MAHTNet(in_channels=1, out_channels=19)
        >>> net.eval()(torch.rand(1, 1, 512, 416)).shape
        torch.Size([1, 19, 512, 416])

        # ablation: no transformer bottleneck, no attention gates, with deep supervision (3 extra heads)
        >>> net = MAHTNet(1, 19, use_transformer=False, use_attention_gates=False, deep_supervision=True)
        >>> net.train()(torch.rand(2, 1, 70, 55)).shape
        torch.Size([2, 4, 19, 70, 55])

        # heatmaps and per-layer attention maps (B, heads, T, T) for visualisation; T = 4 * 4 tokens here
        >>> heatmaps, attn = MAHTNet(1, 19).eval().forward_with_attention(torch.rand(1, 1, 64, 64))
        >>> heatmaps.shape, len(attn), attn[0].shape
        (torch.Size([1, 19, 64, 64]), 4, torch.Size([1, 8, 16, 16]))
    """

    __constants__ = ["num_stages", "stride", "deep_supervision", "min_tokens"]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 128, 256),
        spatial_dims: int = 2,
        img_size: Sequence[int] = (512, 416),
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 8,
        mlp_dim: int = 1024,
        dropout_rate: float = 0.0,
        pos_embed: str = "learnable",
        qkv_bias: bool = True,
        use_transformer: bool = True,
        use_attention_gates: bool = True,
        use_spatial_attention: bool = True,
        deep_supervision: bool = False,
        deep_supr_num: int | None = None,
        num_res_units: int = 1,
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.01}),
        norm: tuple | str | None = ("instance", {"affine": True}),
        attention_reduction: int = 8,
        use_flash_attention: bool = True,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ValueError(f"MAHTNet supports spatial_dims=2 only, got {spatial_dims}.")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be positive, got {in_channels}, {out_channels}.")
        channels = tuple(int(c) for c in channels)
        if len(channels) < 2:
            raise ValueError(f"channels must have at least 2 stages, got {channels}.")
        if min(channels) < 1:
            raise ValueError(f"channels must be positive, got {channels}.")
        if len(img_size) != spatial_dims or min(img_size) < 1:
            raise ValueError(f"img_size must be {spatial_dims} positive ints, got {img_size}.")
        if num_res_units < 1:
            raise ValueError(f"num_res_units must be >= 1, got {num_res_units}.")
        if attention_reduction < 1:
            raise ValueError(f"attention_reduction must be >= 1, got {attention_reduction}.")
        if not 0.0 <= dropout_rate <= 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1], got {dropout_rate}.")
        if use_transformer:
            if hidden_size < 1 or num_heads < 1 or mlp_dim < 1 or num_layers < 1:
                raise ValueError("hidden_size, num_heads, mlp_dim and num_layers must be positive.")
            if hidden_size % num_heads != 0:
                raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads}).")
            if pos_embed not in _POS_EMBED_TYPES:
                raise ValueError(f"pos_embed must be one of {_POS_EMBED_TYPES}, got {pos_embed!r}.")
            if pos_embed != "none" and hidden_size % 4 != 0:
                raise ValueError(f"hidden_size must be divisible by 4 for 2D positional encoding, got {hidden_size}.")
        n = len(channels)
        if deep_supr_num is None:
            deep_supr_num = n - 1
        if deep_supervision and not 1 <= deep_supr_num <= n - 1:
            raise ValueError(f"deep_supr_num must be in [1, {n - 1}] for {n} stages, got {deep_supr_num}.")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.channels = channels
        self.spatial_dims = spatial_dims
        self.num_stages = n
        self.use_transformer = use_transformer
        self.use_attention_gates = use_attention_gates
        self.use_spatial_attention = use_spatial_attention
        self.deep_supervision = deep_supervision
        self.deep_supr_num = deep_supr_num if deep_supervision else 0
        self.min_tokens = 2  # padded bottleneck grid is at least 2 x 2 (instance norm needs > 1 value)
        self.stride = 2**n
        self.grid_size = tuple(max(int(math.ceil(s / self.stride)), self.min_tokens) for s in img_size)
        stem_channels = max(channels[0] // 2, 1)

        # encoder
        self.stem = Convolution(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=stem_channels,
            kernel_size=3,
            act=act,
            norm=norm,
        )
        stages = []
        prev = stem_channels
        for c in channels:
            units: list[nn.Module] = [
                ResidualUnit(
                    spatial_dims=spatial_dims,
                    in_channels=prev,
                    out_channels=c,
                    strides=2,
                    subunits=2,
                    act=act,
                    norm=norm,
                )
            ]
            units += [
                ResidualUnit(spatial_dims=spatial_dims, in_channels=c, out_channels=c, subunits=2, act=act, norm=norm)
                for _ in range(num_res_units - 1)
            ]
            if use_spatial_attention:
                units.append(
                    SpatialChannelAttention(spatial_dims=spatial_dims, channels=c, reduction=attention_reduction)
                )
            stages.append(nn.Sequential(*units))
            prev = c
        self.encoder = nn.ModuleList(stages)

        # bottleneck
        self.bottleneck: nn.Module = (
            TransformerBottleneck(
                spatial_dims=spatial_dims,
                in_channels=channels[-1],
                hidden_size=hidden_size,
                mlp_dim=mlp_dim,
                num_layers=num_layers,
                num_heads=num_heads,
                grid_size=self.grid_size,
                dropout_rate=dropout_rate,
                pos_embed=pos_embed,
                qkv_bias=qkv_bias,
                use_flash_attention=use_flash_attention,
            )
            if use_transformer
            else nn.Identity()
        )

        # decoder, coarse to fine: levels at 1/2**(n-1), ..., 1/2, 1 (full resolution, stem skip)
        level_channels = [stem_channels] + list(channels[:-1])  # channels of skip k = level at scale 1/2**k
        levels = []
        top = channels[-1]
        for k in range(n - 1, -1, -1):
            c = level_channels[k]
            levels.append(
                _DecoderLevel(
                    spatial_dims=spatial_dims,
                    skip_channels=c,
                    top_channels=top,
                    out_channels=c,
                    use_gate=use_attention_gates,
                    act=act,
                    norm=norm,
                    subunits=2 if k > 0 else 1,
                )
            )
            top = c
        self.decoder = nn.ModuleList(levels)

        # heads: full resolution + deep supervision at 1/2, 1/4, ...
        self.head = Convolution(
            spatial_dims=spatial_dims,
            in_channels=stem_channels,
            out_channels=out_channels,
            kernel_size=1,
            conv_only=True,
        )
        self.ds_heads = nn.ModuleList(
            [
                Convolution(
                    spatial_dims=spatial_dims,
                    in_channels=level_channels[k],
                    out_channels=out_channels,
                    kernel_size=1,
                    conv_only=True,
                )
                for k in range(1, self.deep_supr_num + 1)
            ]
        )

    # ------------------------------------------------------------------ helpers
    def padded_size(self, size: int) -> int:
        """Size an input dimension is padded to: a multiple of ``2**len(channels)``, at least twice that."""
        return max((size + self.stride - 1) // self.stride, self.min_tokens) * self.stride

    def token_grid_size(self, height: int, width: int) -> Tuple[int, int]:
        """Transformer token grid ``(h, w)`` for an ``height`` x ``width`` input; ``T = h * w``, row-major."""
        return self.padded_size(height) // self.stride, self.padded_size(width) // self.stride

    def transformer_parameters(self) -> List[nn.Parameter]:
        """Parameters of the transformer bottleneck (token projections, positional encoding, blocks)."""
        return list(self.bottleneck.parameters()) if self.use_transformer else []

    def cnn_parameters(self) -> List[nn.Parameter]:
        """All other parameters (encoder, attention modules, decoder, heads)."""
        ids = {id(p) for p in self.transformer_parameters()}
        return [p for p in self.parameters() if id(p) not in ids]

    # ------------------------------------------------------------------ forward
    def _run(self, x: torch.Tensor, all_heads: bool) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        ph, pw = self.padded_size(h), self.padded_size(w)
        top, left = (ph - h) // 2, (pw - w) // 2
        if ph != h or pw != w:
            x = F.pad(x, [left, pw - w - left, top, ph - h - top])

        skips: List[torch.Tensor] = []
        y = self.stem(x)
        skips.append(y)
        for stage in self.encoder:
            y = stage(y)
            skips.append(y)
        y = self.bottleneck(y)

        feats: List[torch.Tensor] = []  # decoder outputs, coarse to fine; feats[-1] at full resolution
        for j, level in enumerate(self.decoder):
            y = level(skips[self.num_stages - 1 - j], y)
            feats.append(y)

        out = self.head(y)
        if all_heads:
            outs = [out]
            for i, head in enumerate(self.ds_heads):
                o = head(feats[self.num_stages - 2 - i])
                outs.append(F.interpolate(o, size=[ph, pw], mode="bilinear", align_corners=False))
            return torch.stack(outs, dim=1)[:, :, :, top : top + h, left : left + w]
        return out[:, :, top : top + h, left : left + w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x: ``(B, in_channels, H, W)``, ``H, W >= 32``.

        Returns:
            heatmap logits ``(B, out_channels, H, W)``; in training mode with deep supervision
            ``(B, 1 + deep_supr_num, out_channels, H, W)``.
        """
        return self._run(x, self.training and self.deep_supervision)

    @torch.jit.unused
    def forward_with_attention(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """
        Full-resolution heatmap logits plus the self-attention weights of every transformer layer (eager only).

        Args:
            x: ``(B, in_channels, H, W)``.

        Returns:
            ``(heatmaps, attentions)``: heatmaps ``(B, out_channels, H, W)`` (full-resolution head only, also in
            training mode), attentions a list with one ``(B, num_heads, T, T)`` tensor per layer (softmax-normalised:
            rows sum to 1; detached), ``T = h * w`` with ``(h, w) = self.token_grid_size(H, W)`` and tokens in
            row-major order over the centred, zero-padded input. Empty list when ``use_transformer=False``.
        """
        blocks = list(self.bottleneck.blocks) if isinstance(self.bottleneck, TransformerBottleneck) else []
        saved = [(b.attn.save_attn, b.attn.use_flash_attention) for b in blocks]
        for b in blocks:
            b.attn.save_attn = True
            b.attn.use_flash_attention = False
        try:
            heatmaps = self._run(x, False)
            attentions = [b.attn.att_mat for b in blocks]
        finally:
            for b, (save, flash) in zip(blocks, saved):
                b.attn.save_attn = save
                b.attn.use_flash_attention = flash
                b.attn.att_mat = torch.Tensor()
        return heatmaps, attentions
