"""Sparsemax, the attention normaliser of MMIN's FIN (paper section 2.3, ref. [12]).

Martins & Astudillo (ICML 2016):
    sparsemax(z) = argmin_{p in simplex} ||p - z||^2                          (M&A eq. 2)
                 = max(z - tau(z), 0)                                         (M&A eq. 3)
with the threshold, over z sorted decreasingly z_(1) >= ... >= z_(K),
    k(z)   = max{ k : 1 + k z_(k) > sum_{j<=k} z_(j) }                       (M&A Alg. 1)
    tau(z) = (sum_{j<=k(z)} z_(j) - 1) / k(z).
Its Jacobian is symmetric, so the vector-Jacobian product equals the JVP     (M&A eq. 14):
    J^T g = s * (g - (s . g) / |S|),   s = 1[p > 0],  S = support.

Masked positions are given as -inf: they are left out of the sort and get exactly 0.
A row that is all -inf gives all zeros. Every computation is done in float64.
"""
import numpy as np

__all__ = ["sparsemax", "sparsemax_threshold", "sparsemax_vjp"]


def _check(z):
    if np.isnan(z).any() or np.isposinf(z).any():
        raise ValueError("sparsemax: entries must be finite or -inf")


def _threshold_row(z):
    """tau for one 1-D row whose finite entries have max 0 (M&A Alg. 1); inf if none."""
    zs = np.sort(z[np.isfinite(z)])[::-1]
    if zs.size == 0:
        return np.inf
    k = np.arange(1, zs.size + 1)
    cumsum = np.cumsum(zs)
    k_z = k[1 + k * zs > cumsum].max()  # k(z); k = 1 always qualifies
    return (cumsum[k_z - 1] - 1.0) / k_z


def _shifted(z, axis):
    """(z - c, c) along `axis`, c = row max of the finite entries (0 for all -inf rows).

    sparsemax(z + c) = sparsemax(z) and tau(z + c) = tau(z) + c, so we work on z - c: the
    entries near the support and the partial sums of Alg. 1 are then O(1) and exact enough
    at |z| ~ 1e4, and the dominant entry of a one-hot row gives exactly 0 - (0 - 1) = 1.
    """
    z = np.asarray(z, dtype=np.float64)
    _check(z)
    c = np.where(np.isfinite(z), z, -np.inf).max(axis=axis, keepdims=True)
    c = np.where(np.isfinite(c), c, 0.0)
    return z - c, c


def _threshold(zs, axis):
    zs = np.moveaxis(zs, axis, -1)
    tau = np.array([_threshold_row(r) for r in zs.reshape(-1, zs.shape[-1])])
    return np.moveaxis(tau.reshape(zs.shape[:-1] + (1,)), -1, axis)


def sparsemax_threshold(z, axis=-1):
    """tau(z) along `axis` (M&A Alg. 1), kept as a size-1 axis; +inf for all -inf rows."""
    zs, c = _shifted(z, axis)
    return _threshold(zs, axis) + c


def sparsemax(z, axis=-1):
    """p = max(z - tau(z), 0) along `axis` (M&A eq. 3); -inf entries give exactly 0."""
    zs, _ = _shifted(z, axis)
    with np.errstate(invalid="ignore"):  # -inf - inf in all-masked rows
        p = np.maximum(zs - _threshold(zs, axis), 0.0)
    return np.where(np.isfinite(zs), p, 0.0)


def sparsemax_vjp(z, g, axis=-1):
    """g^T J_sparsemax(z) = s * (g - mean_{j in S} g_j), s = 1[p > 0] (M&A eq. 14)."""
    g = np.asarray(g, dtype=np.float64)
    s = (sparsemax(z, axis) > 0).astype(np.float64)
    size = np.maximum(s.sum(axis=axis, keepdims=True), 1.0)  # all-masked rows: s = 0
    mean_on_support = (s * g).sum(axis=axis, keepdims=True) / size
    return s * (g - mean_on_support)
