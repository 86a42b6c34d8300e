"""Axis-aware visual refinement: directional (D, H, W) dependencies at linear cost."""

from __future__ import annotations

import torch
from torch import nn

from rtfsyn.models._common import ModelError, axis_conv3d, check_int, norm3d

__all__ = ["AxisAwareRefinement"]


class AxisAwareRefinement(nn.Module):
    """Three directional branches, softly mixed, added residually.

    For each axis ``a`` of ``(D, H, W)``:

    * a long depthwise 1-D convolution along ``a`` (the grouped ``Conv3d`` with kernel
      ``(k,1,1)``, ``(1,k,1)`` or ``(1,1,k)``, ``groups = C``, computed by
      :func:`~rtfsyn.models._common.axis_conv3d`);
    * a gate ``sigmoid(conv1d(mean of the features over the two other axes))`` — one value
      per channel and position along ``a`` — broadcast back over the other axes.

    ``y = x + proj(Σ_a softmax(mix)_a · dwconv_a(n) ⊙ gate_a(n))`` with ``n = GroupNorm(x)``.
    Cost ``O(C·k·N)`` for the convolutions plus ``O(C²·(D + H + W))`` for the gates: linear
    in the voxel count ``N``.

    Args:
        channels: feature channels ``C``.
        kernel_size: odd length ``k`` of the directional convolutions.
        gate_kernel: odd kernel size of the gate's 1-D convolution (over the pooled profile).
        tie_weights: use the same directional kernel and gate for all three axes (then the
            module commutes with axis permutations if the mixing weights are equal).

    Shapes: ``(B, C, D, H, W) -> (B, C, D, H, W)``.
    """

    def __init__(
        self, channels: int, kernel_size: int = 7, gate_kernel: int = 3, tie_weights: bool = False
    ) -> None:
        super().__init__()
        self.channels = check_int("channels", channels)
        for name, k in (("kernel_size", kernel_size), ("gate_kernel", gate_kernel)):
            if check_int(name, k) % 2 == 0:
                raise ModelError(f"{name}={k} must be odd")
        self.kernel_size = kernel_size
        self.tie_weights = bool(tie_weights)
        n = 1 if tie_weights else 3
        self.norm = norm3d(channels)
        # (n, C, k) directional depthwise kernels, initialised like a Conv1d with fan-in k
        bound = 1.0 / kernel_size**0.5
        self.dw_weight = nn.Parameter(torch.empty(n, channels, kernel_size).uniform_(-bound, bound))
        self.dw_bias = nn.Parameter(torch.zeros(n, channels))
        self.gates = nn.ModuleList(
            nn.Conv1d(channels, channels, gate_kernel, padding=gate_kernel // 2) for _ in range(n)
        )
        self.mix = nn.Parameter(torch.zeros(3))
        self.proj = nn.Conv3d(channels, channels, 1)

    def mixing_weights(self) -> torch.Tensor:
        """The three branch weights ``softmax(mix)`` (D, H, W order)."""
        return self.mix.softmax(0)

    def _branch(self, h: torch.Tensor, axis: int) -> torch.Tensor:
        i = 0 if self.tie_weights else axis
        y = axis_conv3d(h, self.dw_weight[i], self.dw_bias[i], axis)
        others = tuple(2 + a for a in range(3) if a != axis)
        profile = h.mean(dim=others)  # (B, C, n_axis)
        gate = torch.sigmoid(self.gates[i](profile))
        view = [gate.shape[0], self.channels, 1, 1, 1]
        view[2 + axis] = gate.shape[-1]
        return y * gate.view(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.channels:
            raise ModelError(
                f"AxisAwareRefinement expects (B, {self.channels}, D, H, W): got {tuple(x.shape)}"
            )
        h = self.norm(x)
        w = self.mixing_weights()
        y = sum(w[a] * self._branch(h, a) for a in range(3))
        return x + self.proj(y)
