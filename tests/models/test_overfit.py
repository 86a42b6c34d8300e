from __future__ import annotations

import torch
import torch.nn.functional as F
from _model_helpers import metas, targets, tiny_model


def _pair(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    noise = torch.randn(1, 1, n // 4, n // 4, n // 4)
    src = F.interpolate(noise, size=(n, n, n), mode="trilinear", align_corners=False)
    src = (src - src.min()) / (src.max() - src.min())
    tgt = torch.sigmoid(8 * (src - 0.5)) * (1 - 0.5 * src**2)  # nonlinear contrast change
    return src, tgt


def test_tiny_model_overfits_one_pair() -> None:
    """The tiny model fits one 16³ pair: the loss falls ≥ 10× in 120 Adam steps (~5 s)."""
    src, tgt = _pair()
    model = tiny_model(seed=0).train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    s_meta, t_meta = [metas()[0]], [targets()[0]]
    losses = []
    for _ in range(120):
        loss = F.mse_loss(model(src, s_meta, t_meta), tgt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first = sum(losses[:5]) / 5
    last = sum(losses[-5:]) / 5
    assert last * 10 <= first, (first, last)
