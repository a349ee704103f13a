"""Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks").

ECE = sum_b (|B_b| / n) * |acc(B_b) - conf(B_b)| over ``n_bins`` equal-width confidence bins
``(lo, hi]`` (15 by default, as in the paper). Empty bins are skipped; a confidence of exactly 0
falls in no bin of ``(lo, hi]``, so it is put in the first bin (documented choice, algorithms.md 11).
Pure numpy; :func:`ece_bins` returns the per-bin counts so streaming callers can add them up.
"""

from __future__ import annotations

import numpy as np


def ece_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> np.ndarray:
    """Per-bin sums ``[n_bins, 3]``: count, sum of confidence, sum of correct (additive over batches)."""
    conf = np.asarray(confidence, dtype=np.float64).ravel()
    corr = np.asarray(correct, dtype=np.float64).ravel()
    if conf.shape != corr.shape:
        raise ValueError(f"confidence has {conf.size} values but correct has {corr.size}")
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    # bin b holds (b/n, (b+1)/n]; ceil(conf*n)-1 maps conf in (lo, hi] to b; conf == 0 -> bin 0
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    out = np.zeros((n_bins, 3), dtype=np.float64)
    out[:, 0] = np.bincount(idx, minlength=n_bins)
    out[:, 1] = np.bincount(idx, weights=conf, minlength=n_bins)
    out[:, 2] = np.bincount(idx, weights=corr, minlength=n_bins)
    return out


def ece_from_bins(bins: np.ndarray) -> float:
    """ECE from the summed output of :func:`ece_bins`."""
    n = bins[:, 0].sum()
    if n == 0:
        return float("nan")
    used = bins[:, 0] > 0
    conf, corr = bins[used, 1], bins[used, 2]
    return float(np.sum(np.abs(corr - conf)) / n)  # sum_b |B_b|/n * |acc_b - conf_b| = sum_b |corr_b - conf_b|/n


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = 15) -> float:
    """ECE of predictions with the given confidences and 0/1 correctness; nan for no predictions."""
    return ece_from_bins(ece_bins(confidence, correct, n_bins))
