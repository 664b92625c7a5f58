"""Property tests: the NumPy oracle `mmin_reference.sparsemax*` against definitions and a
general-purpose solver, and the torch `mmin_plugin.modeling.sparsemax` / `Sparsemax` against the oracle.

Tolerances (float64 and float32). Let n be the length of the normalised axis, M the largest
finite |z| of the input and eps the machine epsilon of the dtype under test.
  * values:   TOL = 4 n eps (1 + M). In p = max(z - tau, 0) the subtraction is exact near
              the support (Sterbenz), so the error is that of tau = (sum of <= n entries of
              size <= M, minus 1) / k: <= n eps (1 + M) (summation bound gamma_n), x4
              headroom. A backend that shifts by max(z) first is far better than this (the
              working tree's backends do; HEAD's sort-based one did not: measured up to
              0.5 n eps (1 + M), e.g. float32 [-16383.9995, -17000] -> [1.001, 0]).
  * row sums: n * TOL (n entries, each within TOL).
  * gradients: the VJP is g - mean_S(g) on the support: 8 n eps (1 + max|g|). Entries whose
              distance to the threshold is within 2 TOL are excluded: there the support itself
              is decided by rounding and sparsemax is not differentiable.
  * vs SLSQP: 1e-6 (the solver's own accuracy at ftol=1e-15, n <= 5, |z| <= 5).
"""

import contextlib
import os

import numpy as np
import pytest
import torch
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.optimize import minimize

import mmin_plugin
import mmin_reference as ref

try:  # tests/ as a package
    from . import strategies as S
except ImportError:  # tests/ as a plain rootdir-relative folder
    import strategies as S

DTYPES = [np.float64, np.float32]
# mmin_plugin.modeling.sparsemax picks its backend per call from MMIN_SPARSEMAX_BACKEND (public API);
# tests that hold torch to the oracle draw it, so every backend meets the oracle
BACKENDS = st.sampled_from(["auto", "torch", "sort"])
FAST = settings(max_examples=S.examples(120), deadline=None)
SLOW = settings(max_examples=S.examples(40), deadline=None)


# --- helpers --------------------------------------------------------------------------------

@contextlib.contextmanager
def sparsemax_backend(name):
    old = os.environ.get("MMIN_SPARSEMAX_BACKEND")
    os.environ["MMIN_SPARSEMAX_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            del os.environ["MMIN_SPARSEMAX_BACKEND"]
        else:
            os.environ["MMIN_SPARSEMAX_BACKEND"] = old


def cast(z, dtype):
    """z rounded to dtype, returned as float64 so the oracle sees exactly torch's input."""
    return np.asarray(z).astype(dtype).astype(np.float64)


def torch_sparsemax(z, dtype, axis=-1):
    out = mmin_plugin.sparsemax(torch.from_numpy(np.asarray(z).astype(dtype)), dim=axis)
    assert out.dtype == torch.from_numpy(np.zeros(1, dtype)).dtype
    assert tuple(out.shape) == np.shape(z)
    return out.double().numpy()


def max_finite_abs(z):
    finite = np.abs(z[np.isfinite(z)])
    return float(finite.max()) if finite.size else 0.0


def tol(z, dtype, axis=-1):
    return 4 * np.shape(z)[axis] * np.finfo(dtype).eps * (1 + max_finite_abs(z))


def threshold_margin(z, axis):
    """Per row, the smallest distance of a finite entry to the threshold tau (inf if none)."""
    tau = ref.sparsemax_threshold(z, axis)
    with np.errstate(invalid="ignore"):
        dist = np.where(np.isfinite(z), np.abs(z - tau), np.inf)
    return dist.min(axis=axis, keepdims=True)


def check_on_simplex(p, z, axis, atol):
    n = z.shape[axis]
    assert not np.isnan(p).any()
    assert (p >= 0).all()
    assert (p[np.isneginf(z)] == 0).all()
    live = np.isfinite(z).any(axis=axis)
    np.testing.assert_allclose(p.sum(axis=axis)[live], 1.0, rtol=0, atol=n * atol)
    assert (np.moveaxis(p, axis, -1)[~live] == 0).all()  # all -inf rows: zeros, not NaN


TIE_EXAMPLES = [
    (np.array([1.0, 0.0]), -1),  # second entry exactly at the threshold
    (np.array([[0.5, 0.5, -0.5], [2.0, 2.0, 2.0]]), 1),  # ties in and at the edge of the support
    (np.array([1e4, 1e4, 1e4 - 1, -1e4]), 0),  # large-magnitude ties
    (np.array([[-np.inf, -np.inf], [3.0, -np.inf]]), -1),  # all-masked row
]


# --- oracle vs definitions ------------------------------------------------------------------

@SLOW
@given(z=S.small_rows())
def test_oracle_and_torch_equal_general_qp_solver(z):
    """sparsemax(z) = argmin_{p >= 0, sum p = 1} ||p - z||^2 (M&A eq. 2), solved by SLSQP."""
    n = z.size
    res = minimize(
        lambda p: np.sum((p - z) ** 2),
        np.full(n, 1.0 / n),
        jac=lambda p: 2 * (p - z),
        method="SLSQP",
        bounds=[(0.0, None)] * n,
        constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1.0, "jac": lambda p: np.ones_like(p)}],
        options={"ftol": 1e-15, "maxiter": 500},
    )
    # status 8 ("positive directional derivative in line search") is SLSQP stalling *at* the
    # optimum under this tight ftol; accept it when the point is feasible
    assert res.status in (0, 8), res.message
    assert abs(res.x.sum() - 1.0) < 1e-9 and (res.x > -1e-9).all()
    np.testing.assert_allclose(ref.sparsemax(z), res.x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(torch_sparsemax(z, np.float64), res.x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(z1=S.bounded_floats(), gap=st.one_of(S.bounded_floats(3.0), S.bounded_floats(100.0)))
def test_two_entries_closed_form(dtype, z1, gap):
    """K = 2: p_1 = clip((z_1 - z_2 + 1)/2, 0, 1), p_2 = 1 - p_1 (M&A section 2.2)."""
    z = cast([z1, z1 - gap], dtype)
    p1 = np.clip((z[0] - z[1] + 1) / 2, 0.0, 1.0)
    expected = np.array([p1, 1.0 - p1])
    np.testing.assert_allclose(ref.sparsemax(z), expected, rtol=0, atol=tol(z, np.float64))
    np.testing.assert_allclose(torch_sparsemax(z, dtype), expected, rtol=0, atol=tol(z, dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(case=S.dominated_rows())
@example(case=(np.array([-1.1]), 0))
@example(case=(np.array([-16383.9995, -17000.0]), 0))
def test_one_hot_when_one_entry_dominates_by_one(dtype, case):
    """z_i >= z_j + 1 for all j != i  =>  sparsemax(z) = e_i: exact 0s; the 1 is exact in
    the oracle (it works on z - max z) and within TOL in torch, which computes
    z_i - fl(z_i - 1) (e.g. float32 sparsemax([-1.1]) = 1 - 2^-23)."""
    z, i = case
    z = cast(z, dtype)
    assume(np.all(np.delete(z[i] - z, i) >= 1.0))  # still dominated after rounding to dtype
    expected = np.eye(z.size)[i]
    np.testing.assert_array_equal(ref.sparsemax(z), expected)
    p = torch_sparsemax(z, dtype)
    np.testing.assert_array_equal(np.delete(p, i), 0.0)
    assert abs(p[i] - 1.0) <= tol(z, dtype)


@FAST
@given(z=S.scores(shape=S.shapes(max_dims=2, max_side=5)), data=st.data())
def test_oracle_vjp_equals_finite_differences_of_oracle(z, data):
    """sparsemax_vjp (M&A eq. 14) against central differences of the oracle's forward."""
    axis = data.draw(S.axes(z.ndim))
    h = 1e-4
    assume((threshold_margin(z, axis) > 10 * h).all())  # no kink within the FD stencil
    g = data.draw(hnp.arrays(np.float64, z.shape, elements=S.bounded_floats(10.0)))
    fd = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        if np.isfinite(z[idx]):
            e = np.zeros_like(z)
            e[idx] = h
            fd[idx] = np.sum(g * (ref.sparsemax(z + e, axis) - ref.sparsemax(z - e, axis))) / (2 * h)
    # piecewise linear => FD exact up to rounding of z +- h: eps (1 + M) / h per term
    atol = 10 * z.size * np.finfo(np.float64).eps * (1 + max_finite_abs(z)) / h * (1 + np.abs(g).max())
    np.testing.assert_allclose(ref.sparsemax_vjp(z, g, axis), fd, rtol=0, atol=atol)


# --- torch vs oracle and shared properties ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(case=S.scores_and_axis(), backend=BACKENDS)
@example(case=TIE_EXAMPLES[0], backend="auto")
@example(case=TIE_EXAMPLES[1], backend="auto")
@example(case=TIE_EXAMPLES[2], backend="auto")
@example(case=TIE_EXAMPLES[3], backend="auto")
def test_torch_matches_oracle_any_axis(dtype, case, backend):
    z, axis = case
    z = cast(z, dtype)
    with sparsemax_backend(backend):
        p = torch_sparsemax(z, dtype, axis)
    np.testing.assert_allclose(p, ref.sparsemax(z, axis), rtol=0, atol=tol(z, dtype, axis))
    assert (p[np.isneginf(z)] == 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(case=S.scores_and_axis(), backend=BACKENDS)
@example(case=TIE_EXAMPLES[3], backend="auto")
def test_output_on_simplex(dtype, case, backend):
    z, axis = case
    z = cast(z, dtype)
    check_on_simplex(ref.sparsemax(z, axis), z, axis, tol(z, np.float64, axis))
    with sparsemax_backend(backend):
        check_on_simplex(torch_sparsemax(z, dtype, axis), z, axis, tol(z, dtype, axis))


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(case=S.scores_and_axis(), data=st.data())
def test_invariant_to_adding_a_constant_to_a_row(dtype, case, data):
    z, axis = case
    z = cast(z, dtype)
    row_shape = list(z.shape)
    row_shape[axis] = 1
    c = data.draw(hnp.arrays(np.float64, tuple(row_shape), elements=S.bounded_floats()))
    shifted = cast(z + c, dtype)
    # rounding z + c to dtype moves each entry by <= spacing(|z + c|); sparsemax is a
    # Euclidean projection, hence 1-Lipschitz in the 2-norm: ||dp||_inf <= sqrt(n) spacing
    moved = np.sqrt(z.shape[axis]) * np.spacing(np.asarray(max_finite_abs(shifted), dtype)).item()
    for p in (lambda x: ref.sparsemax(x, axis), lambda x: torch_sparsemax(x, dtype, axis)):
        np.testing.assert_allclose(
            p(shifted), p(z), rtol=0, atol=moved + tol(z, dtype, axis) + tol(shifted, dtype, axis)
        )


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(case=S.scores_and_axis(), data=st.data())
def test_permutation_equivariant(dtype, case, data):
    z, axis = case
    z = cast(z, dtype)
    perm = np.asarray(data.draw(st.permutations(range(z.shape[axis]))))
    atol = 2 * tol(z, dtype, axis)
    for p in (lambda x: ref.sparsemax(x, axis), lambda x: torch_sparsemax(x, dtype, axis)):
        np.testing.assert_allclose(p(np.take(z, perm, axis)), np.take(p(z), perm, axis), rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(z=S.scores(shape=S.shapes(max_dims=1), masked=False), data=st.data())
def test_ignores_minus_inf_positions(dtype, z, data):
    """Masking entries with -inf = sparsemax of the row without them, exact zeros there."""
    z = cast(z, dtype)
    mask = data.draw(hnp.arrays(np.bool_, z.shape, elements=st.booleans()))
    assume(not mask.all())
    masked = np.where(mask, -np.inf, z)
    expected = np.zeros_like(z)
    expected[~mask] = ref.sparsemax(z[~mask])
    for got, dt in ((ref.sparsemax(masked), np.float64), (torch_sparsemax(masked, dtype), dtype)):
        assert (got[mask] == 0).all()
        np.testing.assert_allclose(got, expected, rtol=0, atol=tol(z, dt))


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(shape=S.shapes(), data=st.data())
def test_all_masked_rows_give_zeros_and_zero_gradient(dtype, shape, data):
    axis = data.draw(S.axes(len(shape)))
    z = np.full(shape, -np.inf)
    np.testing.assert_array_equal(ref.sparsemax(z, axis), 0.0)
    x = torch.from_numpy(z.astype(dtype)).requires_grad_(True)
    y = mmin_plugin.sparsemax(x, dim=axis)
    y.backward(torch.ones_like(y))
    assert (y == 0).all() and (x.grad == 0).all()
    np.testing.assert_array_equal(ref.sparsemax_vjp(z, np.ones(shape), axis), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(case=S.scores_and_axis(), data=st.data(), backend=BACKENDS)
@example(case=TIE_EXAMPLES[1], data=None, backend="auto")
def test_torch_backward_matches_oracle_vjp(dtype, case, data, backend):
    z, axis = case
    z = cast(z, dtype)
    if data is None:
        g = np.arange(z.size, dtype=np.float64).reshape(z.shape)
    else:
        g = data.draw(hnp.arrays(np.float64, z.shape, elements=S.bounded_floats(10.0)))
    g = cast(g, dtype)
    x = torch.from_numpy(z.astype(dtype)).requires_grad_(True)
    with sparsemax_backend(backend):
        mmin_plugin.sparsemax(x, dim=axis).backward(torch.from_numpy(g.astype(dtype)))
    grad = x.grad.double().numpy()
    assert not np.isnan(grad).any()
    assert (grad[np.isneginf(z)] == 0).all()
    smooth = np.broadcast_to(threshold_margin(z, axis) > 2 * tol(z, dtype, axis), z.shape)
    atol = 8 * z.shape[axis] * np.finfo(dtype).eps * (1 + np.abs(g).max())
    np.testing.assert_allclose(grad[smooth], ref.sparsemax_vjp(z, g, axis)[smooth], rtol=0, atol=atol)


def test_threshold_tie_belongs_outside_the_support():
    """An entry exactly at tau has p = 0 and gets no gradient, in the oracle and in torch."""
    z = np.array([1.0, 0.0, -np.inf])
    g = np.array([1.0, 5.0, 7.0])
    np.testing.assert_array_equal(ref.sparsemax(z), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(ref.sparsemax_vjp(z, g), [0.0, 0.0, 0.0])
    x = torch.tensor(z, requires_grad=True)
    y = mmin_plugin.sparsemax(x)
    y.backward(torch.tensor(g))
    np.testing.assert_array_equal(y.detach().numpy(), [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 0.0, 0.0])


@SLOW
@given(case=S.scores_and_axis(max_dims=2), backend=BACKENDS)
def test_torch_gradcheck_float64(case, backend):
    z, axis = case
    assume((threshold_margin(z, axis) > 1e-3).all())  # differentiable: away from the kinks
    x = torch.from_numpy(z.copy()).requires_grad_(True)
    with sparsemax_backend(backend):
        assert torch.autograd.gradcheck(lambda t: mmin_plugin.sparsemax(t, dim=axis), (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@FAST
@given(case=S.scores_and_axis())
def test_module_equals_function(dtype, case):
    z, axis = case
    x = torch.from_numpy(z.astype(dtype))
    torch.testing.assert_close(mmin_plugin.Sparsemax(axis)(x), mmin_plugin.sparsemax(x, dim=axis), rtol=0, atol=0)
