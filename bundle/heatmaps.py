"""Gaussian heatmaps with sub-pixel centres, the heatmap loss, and decoding heatmaps back to landmarks.

Frames: landmarks are ``(y, x)`` pixels of the heatmap's own grid, the centre of the first pixel at ``(0, 0)``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

__all__ = [
    "render_gaussian_heatmaps",
    "heatmap_to_landmarks",
    "heatmap_spread",
    "heatmap_probs",
    "HeatmapCrossEntropyLoss",
]


def render_gaussian_heatmaps(
    landmarks: torch.Tensor, spatial_size: Sequence[int], sigma: float, normalize: bool = False
) -> torch.Tensor:
    """Gaussian heatmaps centred exactly (sub-pixel) on each landmark.

    MONAI's ``GenerateHeatmap`` rounds centres to whole pixels; this does not.

    Args:
        landmarks: ``(N, 2)`` or ``(B, N, 2)`` ``(y, x)`` pixels. Landmarks outside the grid give all-zero maps.
        spatial_size: ``(H, W)`` of the heatmaps.
        sigma: standard deviation in pixels of the heatmap grid.
        normalize: if True each map sums to 1 (a probability distribution), else its peak value is 1.

    Returns:
        ``(N, H, W)`` or ``(B, N, H, W)`` float32 heatmaps.
    """
    if sigma <= 0:
        raise ValueError(f"sigma should be positive, got {sigma}.")
    if landmarks.shape[-1] != 2:
        raise ValueError(f"landmarks should end with a dimension of 2 (y, x), got shape {tuple(landmarks.shape)}.")
    h, w = int(spatial_size[0]), int(spatial_size[1])
    pts = landmarks.to(torch.float32)
    ys = torch.arange(h, dtype=torch.float32, device=pts.device)
    xs = torch.arange(w, dtype=torch.float32, device=pts.device)
    # separable Gaussian: exp(-(dy^2 + dx^2) / 2s^2) = exp(-dy^2/2s^2) * exp(-dx^2/2s^2)
    gy = torch.exp(-((ys - pts[..., 0:1]) ** 2) / (2 * sigma**2))  # (..., N, H)
    gx = torch.exp(-((xs - pts[..., 1:2]) ** 2) / (2 * sigma**2))  # (..., N, W)
    heat = gy.unsqueeze(-1) * gx.unsqueeze(-2)
    inside = ((pts[..., 0] >= -0.5) & (pts[..., 0] <= h - 0.5) & (pts[..., 1] >= -0.5) & (pts[..., 1] <= w - 0.5))
    heat = heat * inside[..., None, None].to(heat.dtype)
    if normalize:
        heat = heat / heat.sum(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return heat


def heatmap_to_landmarks(
    heatmaps: torch.Tensor, refine: str = "quadratic", log_scale: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode heatmaps (or heatmap logits) to sub-pixel landmark positions.

    The argmax gives the pixel; ``"quadratic"`` then fits a parabola to the log of the map along each axis
    through the peak and its two neighbours, which recovers the exact centre of a Gaussian (the log of a Gaussian
    is a parabola). Logits from a spatial-softmax model are log-probabilities up to a constant, so they are used
    directly. ``"none"`` keeps the argmax pixel.

    Args:
        heatmaps: ``(B, N, H, W)`` non-negative heatmaps, or logits with ``log_scale=True``.
        refine: ``"quadratic"`` or ``"none"``.
        log_scale: the maps are logits / log-probabilities (a spatial-softmax network's output).

    Returns:
        ``(landmarks, peak)``: ``(B, N, 2)`` float32 ``(y, x)`` pixels of the heatmap grid, and ``(B, N)`` the
        value at the argmax.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps should be (B, N, H, W), got shape {tuple(heatmaps.shape)}.")
    if refine not in ("quadratic", "none"):
        raise ValueError(f"refine should be 'quadratic' or 'none', got {refine!r}.")
    b, n, h, w = heatmaps.shape
    hm = heatmaps.detach().to(torch.float32)
    flat = hm.reshape(b, n, h * w)
    peak, idx = flat.max(dim=-1)
    iy = torch.div(idx, w, rounding_mode="floor")
    ix = idx % w
    coords = torch.stack([iy, ix], dim=-1).to(torch.float32)
    if refine == "none":
        return coords, peak
    logmap = hm if log_scale else torch.log(hm.clamp_min(1e-12))
    logflat = logmap.reshape(b, n, h * w)

    # the parabola goes through the peak and its neighbours; at the border the stencil moves one pixel inwards
    cy = iy.clamp(1, max(h - 2, 0)) if h >= 3 else iy
    cx = ix.clamp(1, max(w - 2, 0)) if w >= 3 else ix

    def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return logflat.gather(-1, (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).unsqueeze(-1)).squeeze(-1)

    for axis, size, centre, lo, mid, hi in (
        (0, h, cy, at(cy - 1, ix), at(cy, ix), at(cy + 1, ix)),
        (1, w, cx, at(iy, cx - 1), at(iy, cx), at(iy, cx + 1)),
    ):
        if size < 3:
            continue
        denom = lo - 2 * mid + hi
        concave = denom < -1e-12
        vertex = centre.to(torch.float32) + 0.5 * (lo - hi) / torch.where(concave, denom, torch.full_like(denom, -1.0))
        pos = coords[..., axis]
        # keep the refined point within one pixel of the argmax (a flat or noisy map can put the vertex far away)
        refined = torch.minimum(torch.maximum(vertex, pos - 1.0), pos + 1.0)
        coords[..., axis] = torch.where(concave, refined, pos)
    return coords, peak


def heatmap_probs(logits: torch.Tensor) -> torch.Tensor:
    """Spatial softmax of ``(B, N, H, W)`` heatmap logits in float32: each map becomes a distribution of its
    landmark's position."""
    b, n, h, w = logits.shape
    return torch.softmax(logits.float().reshape(b, n, -1), dim=-1).reshape(b, n, h, w)


def heatmap_spread(logits: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """Root-mean-square distance of the softmax distribution from the decoded landmark, in heatmap pixels.

    A sharp, unimodal prediction has a small spread; a flat or multi-modal one (an uncertain landmark) a large one.

    Args:
        logits: ``(B, N, H, W)`` heatmap logits.
        landmarks: ``(B, N, 2)`` ``(y, x)`` decoded positions in the same grid.

    Returns:
        ``(B, N)`` spread in pixels.
    """
    h, w = logits.shape[-2:]
    prob = heatmap_probs(logits.detach())
    # sum p(y, x) ((y - ly)^2 + (x - lx)^2) from the two marginals: the same sum without an (H, W) distance map
    ys = torch.arange(h, dtype=torch.float32, device=logits.device)
    xs = torch.arange(w, dtype=torch.float32, device=logits.device)
    var_y = (prob.sum(-1) * (ys - landmarks[..., 0, None]) ** 2).sum(-1)
    var_x = (prob.sum(-2) * (xs - landmarks[..., 1, None]) ** 2).sum(-1)
    return torch.sqrt(var_y + var_x)


class HeatmapCrossEntropyLoss(_Loss):
    """Cross-entropy between a spatial softmax of the logits and the normalised Gaussian target, minus the
    target's entropy (so the loss is the KL divergence: 0 for a perfect prediction).

    Unlike MSE against peak-1 Gaussians, whose all-zero output is a deep local minimum (it collapsed in our
    tests: MRE 170 mm), the softmax must put its mass somewhere, so every step pulls the mass to the landmark.

    Deep supervision: if ``input`` is ``(B, S, N, H, W)`` (several heads upsampled to full resolution, head 0
    the finest) the per-head losses are combined with ``scale_weights`` (default: halving per head), or with
    learned uncertainty weights if ``learn_weights=True`` (Kendall et al. 2018: ``sum_s exp(-w_s) L_s + w_s``).

    The target is either heatmaps ``(B, N, H, W)`` or the landmarks themselves, ``(B, N, 2)`` ``(y, x)`` pixels of
    the network input: then the Gaussian targets (``sigma`` pixels) are rendered here, on the loss's device, which
    spares the data loader from making and shipping ``N`` full-size maps per image.

    Args:
        scale_weights: fixed weights per head; ignored when ``learn_weights`` is True.
        learn_weights: learn one log-variance per head (the parameters must then be given to the optimiser).
        num_scales: number of heads for the learned weights.
        sigma: Gaussian SD in pixels, used when the target is given as landmarks.
    """

    def __init__(
        self,
        scale_weights: Sequence[float] | None = None,
        learn_weights: bool = False,
        num_scales: int = 1,
        sigma: float = 2.0,
    ):
        super().__init__()
        if sigma <= 0:
            raise ValueError(f"sigma should be positive, got {sigma}.")
        self.sigma = float(sigma)
        self.scale_weights = None if scale_weights is None else [float(w) for w in scale_weights]
        self.learn_weights = learn_weights
        if learn_weights:
            if num_scales < 1:
                raise ValueError(f"num_scales should be >= 1, got {num_scales}.")
            self.log_vars = torch.nn.Parameter(torch.zeros(num_scales))
        self.last_scale_losses: list[float] = []

    @staticmethod
    def kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, n = logits.shape[:2]
        logp = F.log_softmax(logits.float().reshape(b, n, -1), dim=-1)
        t = target.float().reshape(b, n, -1)
        t = t / t.sum(dim=-1, keepdim=True).clamp_min(1e-12)
        ce = -(t * logp).sum(-1)
        ent = -(t * torch.log(t.clamp_min(1e-12))).sum(-1)
        return (ce - ent).mean()

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.ndim == 3 and target.shape[-1] == 2:  # landmarks: render the targets here
            target = render_gaussian_heatmaps(target.to(input.device), input.shape[-2:], self.sigma)
        if input.ndim == 4:
            loss = self.kl(input, target)
            self.last_scale_losses = [float(loss.detach())]
            return loss
        if input.ndim != 5:
            raise ValueError(f"input should be (B, N, H, W) or (B, S, N, H, W), got {tuple(input.shape)}.")
        losses = [self.kl(input[:, s], target) for s in range(input.shape[1])]
        self.last_scale_losses = [float(x.detach()) for x in losses]
        if self.learn_weights:
            if len(losses) != self.log_vars.numel():
                raise ValueError(f"got {len(losses)} heads but num_scales={self.log_vars.numel()}.")
            lv = self.log_vars.to(losses[0].device)  # the weights may live on another device than the network
            return sum(torch.exp(-lv[s]) * losses[s] + lv[s] for s in range(len(losses)))
        weights = self.scale_weights or [0.5**s for s in range(len(losses))]
        if len(weights) < len(losses):
            raise ValueError(f"got {len(losses)} heads but only {len(weights)} scale_weights.")
        total = sum(weights[: len(losses)])
        return sum(w * l for w, l in zip(weights, losses)) / total
