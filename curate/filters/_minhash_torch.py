"""torch version of the ``fast`` signature kernel (for CUDA): same numbers as the numba kernel.

uint64 arithmetic is done in int64 (two's complement wraps the same way); right shifts are made logical
by masking. Shingle hashing stays on the CPU (numba); only the K permutations x min run on the device.
"""

from __future__ import annotations

import numpy as np

_M32 = 0xFFFFFFFF


def _i64(x: int) -> int:
    """A uint64 value as the int64 with the same bits."""
    return x - (1 << 64) if x >= (1 << 63) else x


def _shr(x, s: int):
    return (x >> s) & ((1 << (64 - s)) - 1)


def _fmix64(h):
    h = h ^ _shr(h, 33)
    h = h * _i64(0xFF51AFD7ED558CCD)
    h = h ^ _shr(h, 33)
    h = h * _i64(0xC4CEB9FE1A85EC53)
    return h ^ _shr(h, 33)


def signatures_fast_torch(hv: np.ndarray, counts: np.ndarray, a: np.ndarray, b: np.ndarray, device: str,
                          chunk: int = 1 << 22) -> np.ndarray:
    """Signatures (docs x K, uint64 holding 32-bit values) of the ``fast`` scheme on ``device``."""
    import torch

    ndoc, k = counts.shape[0], a.shape[0]
    ta = torch.from_numpy(a.view(np.int64)).to(device)
    tb = torch.from_numpy(b.view(np.int64)).to(device)
    sig = torch.full((ndoc, k), _M32, dtype=torch.int64, device=device)
    doc = torch.from_numpy(np.repeat(np.arange(ndoc, dtype=np.int64), counts)).to(device)
    h_all = torch.from_numpy(hv.view(np.int64)).to(device)
    step = max(1, chunk // max(k, 1))
    for s in range(0, h_all.shape[0], step):
        h = _fmix64(h_all[s:s + step])
        v = _shr(h[:, None] * ta[None, :] + tb[None, :], 32)
        idx = doc[s:s + step, None].expand(-1, k)
        sig.scatter_reduce_(0, idx, v, reduce="amin", include_self=True)
    return sig.cpu().numpy().view(np.uint64)
