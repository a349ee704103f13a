"""Seeded Rademacher random projection (Johnson-Lindenstrauss), generated block-wise.

The matrix ``P`` (``dim x proj_dim``, entries +-1 with equal probability, no ``1/sqrt(k)`` scale, as
TRAK's ``BasicProjector`` with ``ProjectionType.rademacher`` used by LESS: MadryLab/trak
``trak/projectors.py``) is never held whole when it is large: it is cut into row tiles of
``row_block`` rows, each generated on demand from its own seed (``seed``, tile index), so memory
stays at one tile (``row_block x proj_dim``) whatever ``dim`` is. When the whole matrix is small
(at most ``cache_bytes``) the tiles are kept after their first use.

``E[<Px, Py>] = proj_dim * <x, y>`` and ``Var[<Px, Py>/proj_dim] = (|x|^2|y|^2 + <x,y>^2 -
2 sum_i x_i^2 y_i^2) / proj_dim`` (at most ``2|x|^2|y|^2/proj_dim``), the JL bound the tests check.

The tile geometry depends only on ``(dim, proj_dim)``, so a given ``(dim, proj_dim, seed, device
type)`` always gives the same matrix, whatever the batch sizes. CPU and CUDA generators draw
different streams (as TRAK's ``BasicProjector`` does), so features from the two devices differ.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

#: entries per tile (row_block * proj_dim); 2**24 fp32 entries = 64 MiB
_TILE_ENTRIES = 1 << 24


def _tile_seed(seed: int, index: int) -> int:
    # splitmix64-style mix so neighbouring (seed, tile) pairs give unrelated streams
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x7FFFFFFFFFFFFFFF


class RademacherProjector:
    """Project ``(batch, dim)`` vectors to ``(batch, proj_dim)`` with a seeded +-1 matrix, tile by tile."""

    def __init__(self, dim: int, proj_dim: int = 8192, *, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, cache_bytes: int = 1 << 28,
                 row_block: int | None = None):
        if dim <= 0 or proj_dim <= 0:
            raise ValueError(f"dim and proj_dim must be positive (got {dim}, {proj_dim})")
        self.dim, self.proj_dim, self.seed = int(dim), int(proj_dim), int(seed)
        self.device = torch.device(device)
        self.dtype = dtype
        self.row_block = int(row_block) if row_block else max(128, _TILE_ENTRIES // self.proj_dim)
        self.n_tiles = -(-self.dim // self.row_block)
        itemsize = torch.empty((), dtype=dtype).element_size()
        self._cache: dict[int, torch.Tensor] | None = (
            {} if self.dim * self.proj_dim * itemsize <= cache_bytes else None)
        self._last: tuple[int, torch.Tensor] | None = None

    def tile(self, index: int) -> torch.Tensor:
        """Rows ``[index*row_block, (index+1)*row_block)`` of the matrix (fewer for the last tile)."""
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        if self._last is not None and self._last[0] == index:  # chunks often end mid-tile
            return self._last[1]
        rows = min(self.row_block, self.dim - index * self.row_block)
        gen = torch.Generator(device=self.device).manual_seed(_tile_seed(self.seed, index))
        t = torch.randint(0, 2, (rows, self.proj_dim), generator=gen, device=self.device, dtype=self.dtype)
        t.mul_(2).sub_(1)
        if self._cache is not None:
            self._cache[index] = t
        else:
            self._last = (index, t)
        return t

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ P`` for ``x`` of shape ``(batch, dim)``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected (batch, {self.dim}), got {tuple(x.shape)}")
        return self.project_chunks([x])

    def project_chunks(self, chunks: Iterable[torch.Tensor]) -> torch.Tensor:
        """``x @ P`` where ``x`` is given as consecutive column chunks ``(batch, n_j)`` with
        ``sum n_j == dim`` (e.g. one chunk per parameter tensor), so the full ``x`` is never built."""
        out: torch.Tensor | None = None
        pos = 0
        for chunk in chunks:
            chunk = chunk.to(device=self.device, dtype=self.dtype)
            if out is None:
                out = torch.zeros(chunk.shape[0], self.proj_dim, device=self.device, dtype=self.dtype)
            n = chunk.shape[1]
            done = 0
            while done < n:
                ti, off = divmod(pos + done, self.row_block)
                tile = self.tile(ti)
                take = min(n - done, tile.shape[0] - off)
                out.addmm_(chunk[:, done:done + take], tile[off:off + take])
                done += take
            pos += n
        if pos != self.dim or out is None:
            raise ValueError(f"chunks cover {pos} columns, expected {self.dim}")
        return out
