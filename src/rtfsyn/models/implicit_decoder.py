"""LIIF-style implicit decoder in 3D: intensity at continuous coordinates.

Coordinate convention (used everywhere in :mod:`rtfsyn.models`)
----------------------------------------------------------------
Coordinates are normalised per axis to ``[-1, 1]`` and ordered like the tensor axes
``(D, H, W)`` — ``coords[..., 0]`` indexes ``D`` (note: the reverse of
:func:`torch.nn.functional.grid_sample`'s ``(x, y, z)``; we flip internally). ``-1`` and
``+1`` are the outer **edges** of the volume, not the centres of its first / last voxel
(``align_corners=False`` semantics): voxel ``j`` of an axis with ``n`` voxels has its centre
at ``-1 + (2j + 1) / n`` and size ``2 / n``. So a grid of any shape over ``[-1, 1]³`` covers
the same field of view; e.g. an output twice as fine along one axis puts two voxels where
the input has one, exactly like ``F.interpolate(..., align_corners=False)``.

The cell size of a query is the size of the output voxel it stands for, in the same
normalised units (``2 / n_out`` per axis; :func:`cell_size`).

Two exact evaluation paths
--------------------------
* **general** (:meth:`ImplicitDecoder.forward`): any set of query points; per query, the 8
  neighbours are found by index arithmetic, gathered, and the MLP runs on ``(q, 8, hidden)``.
* **grid** (:meth:`ImplicitDecoder.forward_grid`, the fast path): the queries are the voxel
  centres of a regular ``(D, H, W)`` grid (every ``out_shape`` call of the models: the output
  on the input grid, an integer multiple of it, or any other voxel size). Then the
  neighbour index, relative coordinate and interpolation weight of a query factor per axis,
  so they are computed on three 1-D tables (the same float32 arithmetic as the general
  path, so the same neighbours and weights); the latent term is gathered with three
  ``index_select`` passes, the relative-coordinate term is a sum of per-axis vectors, the
  skip features are interpolated separably, and the MLP runs as large channels-last
  matmuls over slabs of the output, one neighbour offset at a time. Same FLOPs, no
  per-query coordinate arithmetic, ``grid_sample`` or 8-way gather. Both paths agree to
  float32 rounding (tests: ≤ 1e-5).

With autograd on a CPU (training) the grid path hands the MLP to :class:`_EnsembleMLP`, which
decodes chunks of ``train_chunk`` queries and keeps their hidden activations for the
backward pass up to ``train_keep_bytes``, recomputing the chunks beyond it (same values and
gradients, a fraction of the memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rtfsyn.models._common import ModelError, check_int

__all__ = [
    "ImplicitDecoder",
    "axis_coords",
    "cell_size",
    "make_coord_grid",
    "sample_features",
]

# the 8 neighbours of the local ensemble: offsets (0 or 1) along (D, H, W)
_OFFSETS = torch.tensor(
    [[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=torch.float32
)


def make_coord_grid(
    shape: Sequence[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    flatten: bool = True,
) -> torch.Tensor:
    """Voxel-centre coordinates of a ``shape = (D, H, W)`` grid over ``[-1, 1]³``.

    Returns ``(D·H·W, 3)`` (``flatten``) or ``(D, H, W, 3)``, last axis in ``(D, H, W)``
    order, C-order flattening (W fastest), centre of voxel ``j`` at ``-1 + (2j+1)/n``.
    """
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ModelError(f"grid shape {tuple(shape)} must be 3 positive sizes")
    axes = [(torch.arange(int(n), device=device, dtype=torch.float64) * 2 + 1) / int(n) - 1
            for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).to(dtype)
    return grid.reshape(-1, 3) if flatten else grid


def axis_coords(n: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Voxel-centre coordinates ``(n,)`` of one axis, float32, bit-identical to the values
    :func:`make_coord_grid` puts on that axis."""
    return ((torch.arange(int(n), device=device, dtype=torch.float64) * 2 + 1) / int(n)
            - 1).float()


def cell_size(
    shape: Sequence[int], device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Voxel size ``(3,)`` of a grid of ``shape`` in normalised units: ``2 / n`` per axis."""
    return torch.tensor([2.0 / int(n) for n in shape], device=device, dtype=dtype)


def sample_features(volume: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Trilinear sample of ``volume (B, C, D, H, W)`` at ``coords (B, Q, 3)`` → ``(B, Q, C)``.

    Uses the convention of this module (``align_corners=False``, border padding).
    """
    b, q = coords.shape[:2]
    grid = coords.flip(-1).reshape(b, q, 1, 1, 3).to(volume.dtype)
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border",
                        align_corners=False)
    return out.reshape(b, volume.shape[1], q).transpose(1, 2)


class ImplicitDecoder(nn.Module):
    """LIIF-3D: an MLP of (latent vector, relative coordinate, cell, embedding) → intensity.

    For a query at ``x`` the 8 latent voxels whose centres surround it (the 2 nearest along
    each axis, clamped at the border) each give a prediction
    ``MLP([z_j, (x − c_j)·n/2, cell·n/2, e, s(x)])`` — relative coordinate and cell in units
    of latent voxels — and the predictions are blended with LIIF's area weights (the volume
    of the box spanned by the query and the diagonally opposite neighbour, i.e. the
    trilinear weights; they sum to 1). The neighbours are found by index arithmetic, which
    is exactly what LIIF's ``grid_sample(mode="nearest")`` at coordinates shifted by ± half a
    latent voxel selects, without 8 sampling passes. ``s(x)`` are optional full-resolution
    skip features sampled trilinearly at ``x``. Activations are ReLU (as in LIIF; cheapest
    on CPU). The first MLP layer is linear in its concatenated input, so it is split
    exactly: the ``z`` part is applied once per latent voxel (not 8× per query), the ``e``
    part once per sample, the ``s`` part once per query.

    Args:
        latent_channels: ``C`` of the latent volume.
        embed_dim: width ``E`` of the per-sample embedding (0: none).
        hidden: MLP width.
        layers: hidden layers (≥ 1).
        skip_channels: channels of the full-resolution skip features (0: none).
        out_channels: predicted channels (1).
        chunk_size: queries per sample decoded at once by the general path (bounds memory;
            the result does not depend on it). 0 or None at call time: chosen from the
            available memory (:func:`auto_chunk`).

Attribute ``fast_path`` (default True): :meth:`forward_grid` uses the grid path; False
makes it fall back to the general path (for benchmarks and tests; same result).

    ``forward(latent (B, C, d, h, w), coords (B, Q, 3), cell (B, Q, 3) | (B, 1, 3) | (3,),
    embedding (B, E) | None, skip (B, S, D, H, W) | None) -> (B, Q, out_channels)``.
    """

    #: queries per chunk of the CPU training path (:class:`_EnsembleMLP`; 0: plain autograd
    #: through the slab path, which keeps ~7 hidden-wide tensors of the whole output per
    #: neighbour). The result does not depend on it.
    train_chunk: int = 512
    #: bytes of hidden activations that path may keep from the forward pass for the backward
    #: pass (chunks beyond it are recomputed): a 2 × 32³ training output fits in the default
    #: and skips the recomputation (~1.3× faster step); larger outputs stay bounded. The
    #: result does not depend on it.
    train_keep_bytes: int = 512 * 2**20

    def __init__(
        self,
        latent_channels: int,
        embed_dim: int = 0,
        hidden: int = 64,
        layers: int = 3,
        skip_channels: int = 0,
        out_channels: int = 1,
        chunk_size: int = 4096,
    ) -> None:
        super().__init__()
        self.latent_channels = check_int("latent_channels", latent_channels)
        self.embed_dim = check_int("embed_dim", embed_dim, minimum=0)
        self.hidden = check_int("hidden", hidden)
        check_int("layers", layers)
        self.skip_channels = check_int("skip_channels", skip_channels, minimum=0)
        check_int("out_channels", out_channels)
        self.chunk_size = check_int("chunk_size", chunk_size)
        self.latent_proj = nn.Linear(latent_channels, hidden)
        self.rel_proj = nn.Linear(3, hidden, bias=False)
        self.cell_proj = nn.Linear(3, hidden, bias=False)
        self.embed_proj = nn.Linear(embed_dim, hidden, bias=False) if embed_dim else None
        self.skip_proj = nn.Linear(skip_channels, hidden, bias=False) if skip_channels else None
        self.layers = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(layers - 1))
        self.out = nn.Linear(hidden, out_channels)
        self.act = nn.ReLU(inplace=True)
        self.fast_path = True
        # output voxels per slab of the grid path (bounds memory at ~7 hidden-wide float32
        # tensors of this many voxels; the result does not depend on it)
        self.grid_chunk = 32768

    def forward(
        self,
        latent: torch.Tensor,
        coords: torch.Tensor,
        cell: torch.Tensor,
        embedding: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
        chunk_size: int | None = None,
    ) -> torch.Tensor:
        b = latent.shape[0]
        self._check(latent, b, embedding, skip)
        if coords.ndim != 3 or coords.shape[0] != b or coords.shape[2] != 3:
            raise ModelError(f"coords must be (B={b}, Q, 3): got {tuple(coords.shape)}")
        coords = coords.float()
        cell = cell.float()
        if cell.ndim == 1:
            cell = cell.view(1, 1, 3)
        cell = cell.expand(b, coords.shape[1], 3)
        # first-layer part of every latent voxel, once: (B, n, hidden)
        feat = self.latent_proj(latent.flatten(2).transpose(1, 2))
        const = self.embed_proj(embedding)[:, None, :] if self.embed_proj is not None else None
        chunk = int(chunk_size or self.chunk_size)
        outs = []
        for s in range(0, coords.shape[1], chunk):
            outs.append(self._decode(feat, latent.shape[2:], coords[:, s:s + chunk],
                                     cell[:, s:s + chunk], const, skip))
        return torch.cat(outs, dim=1)

    def _decode(
        self,
        feat: torch.Tensor,
        grid: Sequence[int],
        coords: torch.Tensor,
        cell: torch.Tensor,
        const: torch.Tensor | None,
        skip: torch.Tensor | None,
    ) -> torch.Tensor:
        b, q = coords.shape[:2]
        size = torch.tensor([float(n) for n in grid], device=coords.device)
        u = (coords + 1.0) * size / 2.0 - 0.5  # continuous latent index
        i0 = torch.floor(u)
        t = (u - i0).unsqueeze(2)  # (B, q, 1, 3)
        off = _OFFSETS.to(coords.device)
        weight = torch.where(off > 0, t, 1.0 - t).prod(-1)  # (B, q, 8) trilinear = LIIF area
        idx = torch.minimum((i0.unsqueeze(2) + off).clamp_min(0.0), size - 1.0)  # (B, q, 8, 3)
        centre = (2.0 * idx + 1.0) / size - 1.0
        rel = (coords.unsqueeze(2) - centre) * size / 2.0
        il = idx.long()
        flat = (il[..., 0] * int(grid[1]) + il[..., 1]) * int(grid[2]) + il[..., 2]
        z = torch.gather(feat, 1, flat.reshape(b, q * 8, 1).expand(-1, -1, feat.shape[-1]))
        shared = self.cell_proj(cell * size / 2.0)  # (B, q, hidden)
        if const is not None:
            shared = shared + const
        if skip is not None and self.skip_proj is not None:
            shared = shared + self.skip_proj(sample_features(skip, coords))
        dtype = feat.dtype
        h = z.view(b, q, 8, -1) + self.rel_proj(rel.to(dtype)) + shared.to(dtype).unsqueeze(2)
        h = self.act(h)
        for layer in self.layers:
            h = self.act(layer(h))
        y = self.out(h)  # (B, q, 8, out)
        return (y * weight.to(y.dtype).unsqueeze(-1)).sum(2)

    # ------------------------------------------------------------------ grid (fast) path
    def forward_grid(
        self,
        latent: torch.Tensor,
        shape: Sequence[int],
        embedding: torch.Tensor | None = None,
        skip: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Decode on the voxel centres of a regular ``shape = (D, H, W)`` grid.

        Returns ``(B, out, D, H, W)``.

        Equal (to float32 rounding) to :meth:`forward` at ``make_coord_grid(shape)`` mapped by
        ``(c + 1) · scale − 1`` (``scale (3,)``: the fraction of the latent's field of view
        the grid covers per axis, default 1) with cell ``cell_size(shape) · scale``.
        """
        shape = tuple(int(n) for n in shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ModelError(f"grid shape {shape} must be 3 positive sizes")
        b = latent.shape[0]
        dev = latent.device
        if scale is None:
            scale = torch.ones(3, device=dev)
        scale = scale.float().to(dev)
        axes = [(axis_coords(n, dev) + 1.0) * scale[a] - 1.0 for a, n in enumerate(shape)]
        cell = cell_size(shape, device=dev) * scale
        if not self.fast_path:
            coords = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
            y = self.forward(latent, coords.reshape(1, -1, 3).expand(b, -1, -1), cell,
                             embedding, skip)
            return y.transpose(1, 2).reshape(b, -1, *shape)
        self._check(latent, b, embedding, skip)
        grid = latent.shape[2:]
        size = torch.tensor([float(n) for n in grid], device=dev)
        tables = [_neighbour_table(axes[a], size[a]) for a in range(3)]
        # first-layer terms: latent (per latent voxel), relative coordinate (per axis), shared
        feat = self.latent_proj(latent.permute(0, 2, 3, 4, 1))  # (B, d, h, w, hidden)
        dtype = feat.dtype
        const = self.cell_proj(cell * size / 2.0)  # (hidden,)
        const = const.expand(b, -1) if self.embed_proj is None or embedding is None else (
            const + self.embed_proj(embedding))
        const = const.to(dtype)
        skip_tab = None if skip is None else [_linear_table(axes[a], skip.shape[2 + a])
                                              for a in range(3)]
        if torch.is_grad_enabled() and dev.type == "cpu" and self.train_chunk:
            return self._grid_train(feat, tables, const, skip, skip_tab, shape)
        w_rel = self.rel_proj.weight  # (hidden, 3)
        rel = [(tables[a][1].unsqueeze(-1) * w_rel[:, a]).to(dtype) for a in range(3)]
        n0, n1, n2 = shape
        rows = max(1, min(n0, int(self.grid_chunk) // max(1, n1 * n2)))
        outs = []
        for r0 in range(0, n0, rows):
            sl = slice(r0, min(n0, r0 + rows))
            shared = const[:, None, None, None, :]
            if skip is not None and skip_tab is not None and self.skip_proj is not None:
                s = _interp_skip(skip, skip_tab, sl)
                shared = self.skip_proj(s.permute(0, 2, 3, 4, 1)) + shared
            outs.append(self._decode_slab(feat, tables, rel, shared.to(dtype), sl))
        y = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
        return y.permute(0, 4, 1, 2, 3).contiguous()

    def _grid_train(
        self,
        feat: torch.Tensor,
        tables: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        const: torch.Tensor,
        skip: torch.Tensor | None,
        skip_tab: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None,
        shape: tuple[int, int, int],
    ) -> torch.Tensor:
        """The grid path with autograd on a CPU (training): :class:`_EnsembleMLP` decodes
        chunks of queries, keeps their hidden activations up to ``train_keep_bytes`` and
        recomputes the rest in the backward pass, instead of autograd keeping ~7
        hidden-wide tensors of the whole output per neighbour: 1.4× faster at 2 × 32³ and
        1.5–3.7× less memory (``benchmarks/decoder_train_step.py``). Same values and
        gradients to float32 rounding."""
        b, hidden = feat.shape[0], feat.shape[-1]
        n_lat = feat.shape[1] * feat.shape[2] * feat.shape[3]
        (i0, r0, w0), (i1, r1, w1), (i2, r2, w2) = tables
        h_lat, w_lat = feat.shape[2], feat.shape[3]
        # per query (D, H, W) and neighbour (8, in _OFFSETS order): flat latent index,
        # relative coordinate (3) and weight, from the per-axis tables
        n0, n1, n2 = shape
        idx = ((i0[:, None, None, :, None, None] * h_lat + i1[None, :, None, None, :, None])
               * w_lat + i2[None, None, :, None, None, :]).reshape(n0, n1, n2, 8)
        wgt = (w0[:, None, None, :, None, None] * w1[None, :, None, None, :, None]
               * w2[None, None, :, None, None, :]).reshape(n0, n1, n2, 8)
        rel = torch.stack(torch.broadcast_tensors(
            r0[:, None, None, :, None, None], r1[None, :, None, None, :, None],
            r2[None, None, :, None, None, :]), dim=-1).reshape(n0, n1, n2, 8, 3)
        q = n0 * n1 * n2
        offs = torch.arange(b, device=feat.device).view(b, 1, 1) * n_lat
        idx = (idx.reshape(1, q, 8) + offs).reshape(b * q, 8)
        shared = const.to(feat.dtype)[:, None, :].expand(b, q, hidden)
        if skip is not None and skip_tab is not None and self.skip_proj is not None:
            s = _interp_skip(skip, skip_tab)
            shared = self.skip_proj(s.permute(0, 2, 3, 4, 1)).reshape(b, q, hidden) + shared
        params: list[torch.Tensor] = []
        for layer in self.layers:
            params += [layer.weight, layer.bias]
        params += [self.out.weight, self.out.bias]
        y = _EnsembleMLP.apply((int(self.train_chunk), int(self.train_keep_bytes)),
                               idx, rel.reshape(q, 8, 3),
                               wgt.reshape(q, 8), feat.reshape(b * n_lat, hidden),
                               shared.reshape(b * q, hidden), self.rel_proj.weight, *params)
        return y.reshape(b, n0, n1, n2, -1).permute(0, 4, 1, 2, 3).contiguous()

    def _decode_slab(
        self,
        feat: torch.Tensor,
        tables: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
        rel: list[torch.Tensor],
        shared: torch.Tensor,
        sl: slice,
    ) -> torch.Tensor:
        """Rows ``sl`` of axis 0 of the grid: ``(B, rows, H, W, out)``."""
        (i0, _, w0), (i1, _, w1), (i2, _, w2) = tables
        i0, w0, r0 = i0[sl], w0[sl], rel[0][sl]
        shared_b2 = [shared + rel[2][:, k][None, None, None] for k in range(2)]
        acc: torch.Tensor | None = None
        for a in range(2):
            g0 = feat.index_select(1, i0[:, a]) + r0[:, a][None, :, None, None]
            for c in range(2):
                g01 = g0.index_select(2, i1[:, c]) + rel[1][:, c][None, None, :, None]
                w01 = w0[:, a][:, None] * w1[:, c][None, :]
                for k in range(2):
                    h = g01.index_select(3, i2[:, k])
                    h = self.act(h.add_(shared_b2[k]))
                    for layer in self.layers:
                        h = _linear_relu(layer, h)
                    y = self.out(h)
                    wgt = (w01[:, :, None] * w2[:, k][None, None, :]).to(y.dtype)
                    y = y * wgt[None, :, :, :, None]
                    acc = y if acc is None else acc.add_(y)
        assert acc is not None
        return acc

    def _check(self, latent: torch.Tensor, b: int, embedding: torch.Tensor | None,
               skip: torch.Tensor | None) -> None:
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise ModelError(
                f"latent must be (B, {self.latent_channels}, d, h, w): got {tuple(latent.shape)}"
            )
        if (embedding is None) != (self.embed_proj is None):
            raise ModelError(f"decoder built with embed_dim={self.embed_dim}: "
                             f"embedding {'missing' if embedding is None else 'unexpected'}")
        if (skip is None) != (self.skip_proj is None):
            raise ModelError(f"decoder built with skip_channels={self.skip_channels}: "
                             f"skip features {'missing' if skip is None else 'unexpected'}")


class _EnsembleMLP(torch.autograd.Function):
    """The local-ensemble MLP of :class:`ImplicitDecoder` over ``M`` queries × 8 neighbours,
    in chunks of ``chunk`` queries. The backward pass reuses the hidden activations of the
    first chunks, as many as fit in ``keep_bytes``, and recomputes the others chunk by chunk.

    ``forward((chunk, keep_bytes), idx (M, 8) long, rel (Q, 8, 3), wgt (Q, 8), feat (N, C),
    shared (M, C), w_rel (C, 3), W_1, b_1, …, W_out, b_out) → (M, out)`` with ``M = B·Q``
    (query ``m`` uses row ``m mod Q`` of ``rel`` and ``wgt``): for neighbour ``j`` of query ``m``
    ``h = relu(feat[idx[m, j]] + rel[m, j] @ w_rel.T + shared[m])``, then the hidden layers
    (linear + ReLU) and the output layer, blended with ``wgt``. Gradients flow to ``feat``,
    ``shared``, ``w_rel`` and the layers (not to the index tables).
    """

    @staticmethod
    def _chunks(m: int, q: int, chunk: int):
        """``(rows of the M queries, rows of the Q-long tables)`` of every chunk; chunks do
        not cross samples, so both are plain slices."""
        for s0 in range(0, m, q):
            for s in range(0, q, chunk):
                e = min(q, s + chunk)
                yield slice(s0 + s, s0 + e), slice(s, e)

    @staticmethod
    def _chunk_acts(idx, rel, feat, shared, w_rel, params):
        n = idx.shape[0]
        h = feat.index_select(0, idx.reshape(-1)).view(n, 8, -1)
        h = h.add_(torch.matmul(rel, w_rel.t()).to(h.dtype)).add_(shared[:, None, :])
        acts = [h.clamp_min_(0.0).view(n * 8, -1)]
        for w, b in zip(params[:-2:2], params[1:-2:2], strict=True):
            acts.append(_fused_linear_relu(acts[-1], w, b))
        return acts

    @staticmethod
    def forward(ctx, sizes, idx, rel, wgt, feat, shared, w_rel, *params):  # type: ignore[override]
        chunk, keep_bytes = sizes
        m, q = idx.shape[0], rel.shape[0]
        w_out, b_out = params[-2], params[-1]
        out = feat.new_empty(m, w_out.shape[0])
        kept: list[list[torch.Tensor] | None] = []
        room = int(keep_bytes)
        for rows, r in _EnsembleMLP._chunks(m, q, chunk):
            acts = _EnsembleMLP._chunk_acts(idx[rows], rel[r], feat, shared[rows], w_rel,
                                            params)
            y = torch.addmm(b_out, acts[-1], w_out.t()).view(-1, 8, w_out.shape[0])
            out[rows] = (y * wgt[r, :, None].to(y.dtype)).sum(1)
            size = sum(a.numel() * a.element_size() for a in acts)
            if size <= room:
                kept.append(acts)
                room -= size
            else:  # this chunk and every later one are recomputed
                kept.append(None)
                room = 0
        ctx.chunk = chunk
        ctx.kept = kept
        ctx.save_for_backward(idx, rel, wgt, feat, shared, w_rel, *params)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        idx, rel, wgt, feat, shared, w_rel, *params = ctx.saved_tensors
        m, q = idx.shape[0], rel.shape[0]
        g_feat = torch.zeros_like(feat)
        g_shared = torch.empty_like(shared)
        g_wrel = torch.zeros_like(w_rel)
        g_params = [torch.zeros_like(p) for p in params]
        weights = params[0::2]
        kept, ctx.kept = ctx.kept, None
        for i, (rows, r) in enumerate(_EnsembleMLP._chunks(m, q, ctx.chunk)):
            acts = kept[i]
            if acts is None:
                acts = _EnsembleMLP._chunk_acts(idx[rows], rel[r], feat, shared[rows], w_rel,
                                                params)
            else:
                kept[i] = None  # free as we go
            g = (grad_out[rows, None, :] * wgt[r, :, None].to(grad_out.dtype)).view(
                -1, grad_out.shape[1])  # (n·8, out)
            for k in range(len(weights) - 1, -1, -1):
                a = acts[k]
                g_params[2 * k].addmm_(g.t(), a)
                g_params[2 * k + 1].add_(g.sum(0))
                g = torch.ops.aten.threshold_backward(torch.mm(g, weights[k]), a, 0.0)
            g_feat.index_add_(0, idx[rows].reshape(-1), g)
            g_shared[rows] = g.view(-1, 8, g.shape[1]).sum(1)
            g_wrel.addmm_(g.t(), rel[r].reshape(-1, 3).to(g.dtype))
        return (None, None, None, None, g_feat, g_shared, g_wrel, *g_params)


def _fused_ok(x: torch.Tensor) -> bool:
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and not torch.is_grad_enabled() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
            and torch.backends.mkldnn.is_available())


def _linear_relu(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``relu(layer(x))``; without autograd on CPU one oneDNN matmul with the bias and ReLU
    fused (about 1.25× faster than ``linear`` + ``relu_`` for 64-wide layers, same result
    to float32 rounding)."""
    w, b = layer.weight, layer.bias
    if x.dtype != w.dtype and torch.is_autocast_enabled("cpu"):
        w, b = w.to(x.dtype), None if b is None else b.to(x.dtype)
    return _fused_linear_relu(x, w, b)


def _fused_linear_relu(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
                       ) -> torch.Tensor:
    """``relu(x @ w.T + b)``, fused by oneDNN where :func:`_fused_ok` (see
    :func:`_linear_relu`)."""
    if _fused_ok(x) and x.dtype == w.dtype:
        try:
            y = torch.ops.mkldnn._linear_pointwise(x.reshape(-1, x.shape[-1]), w, b, "relu",
                                                   [None], "")
            return y.view(*x.shape[:-1], -1)
        except RuntimeError:  # pragma: no cover - op unavailable in this build
            pass
    return F.relu(F.linear(x, w, b), inplace=True)


def _neighbour_table(
    coords: torch.Tensor, size: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-axis local-ensemble table of :meth:`ImplicitDecoder._decode` for 1-D ``coords (N,)``
    on a latent axis of ``size`` voxels: neighbour index ``(N, 2)`` (long), relative
    coordinate ``(N, 2)`` and weight ``(N, 2)`` for offsets 0 and 1 — the same float32
    operations as the general path, element by element."""
    u = (coords + 1.0) * size / 2.0 - 0.5
    i0 = torch.floor(u)
    t = (u - i0).unsqueeze(1)  # (N, 1)
    off = torch.tensor([0.0, 1.0], device=coords.device)
    weight = torch.where(off > 0, t, 1.0 - t)
    idx = torch.minimum((i0.unsqueeze(1) + off).clamp_min(0.0), size - 1.0)
    centre = (2.0 * idx + 1.0) / size - 1.0
    rel = (coords.unsqueeze(1) - centre) * size / 2.0
    return idx.long(), rel, weight


def _linear_table(
    coords: torch.Tensor, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``grid_sample`` (bilinear, border, ``align_corners=False``) along one axis of ``n``
    voxels at ``coords (N,)``: low index, high index ``(N,)`` and weight of the high one."""
    x = ((coords + 1.0) * n - 1.0) / 2.0
    x = x.clamp(0.0, n - 1.0)
    lo = torch.floor(x)
    w = x - lo
    lo_i = lo.long()
    return lo_i, torch.clamp(lo_i + 1, max=n - 1), w


def _interp_skip(
    skip: torch.Tensor, tables: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    rows: slice = slice(None),
) -> torch.Tensor:
    """Skip features ``(B, S, D', H', W')`` interpolated separably to the grid of three
    :func:`_linear_table` tables, rows ``rows`` of its first axis only."""
    s = _interp_axis(skip, 2, *(t[rows] for t in tables[0]))
    s = _interp_axis(s, 3, *tables[1])
    return _interp_axis(s, 4, *tables[2])


def _interp_axis(
    v: torch.Tensor, dim: int, lo: torch.Tensor, hi: torch.Tensor, w: torch.Tensor
) -> torch.Tensor:
    """Linear interpolation of ``v`` along ``dim`` with a :func:`_linear_table`."""
    shape = [1] * v.ndim
    shape[dim] = -1
    w = w.to(v.dtype).view(shape)
    a = v.index_select(dim, lo)
    return torch.lerp(a, v.index_select(dim, hi), w)
