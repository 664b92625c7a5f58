"""Exactness, gradients and plumbing of mmin_plugin.modeling.sparsemax, for every backend.

Reference: `sparsemax_sort` on the float64 copy of the input (M&A Alg. 1 in float64 on
y = z - max z), itself checked against the optimality conditions of the projection.
Tolerances: 1e-6 for float32 results, 1e-12 for float64 results, at every |z| <= 1e4
(the backends work on z - max z, so the error is a few ulps of p, not of z).
"""
import importlib
import logging

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from mmin_plugin.errors import MMINConfigError, MMINError

from .strategies import examples

S = importlib.import_module("mmin_plugin.modeling.sparsemax")  # the package attribute is the function
N = importlib.import_module("mmin_plugin.modeling._sparsemax_native")

BACKENDS = ["native", "torch", "sort"]
ATOL = {torch.float32: 1e-6, torch.float64: 1e-12}
NINF = float("-inf")


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Small tensors: one torch thread is faster, and immune to a loaded machine (2-thread
    torch ops wait for descheduled workers). test_threads_do_not_change_results uses 2."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _native_or_skip():
    try:
        N.kernels()
    except RuntimeError as exc:  # pragma: no cover - only without a C compiler
        pytest.skip(f"native kernel unavailable: {exc}")


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    if request.param == "native":
        _native_or_skip()
    monkeypatch.setenv("MMIN_SPARSEMAX_BACKEND", request.param)
    return request.param


def reference(x, dim=-1):
    return S.sparsemax_sort(x.double(), dim)


def assert_exact(p, x, dim=-1):
    """p equals the float64 sort reference to 1e-6 (float32) / 1e-12 (float64)."""
    r = reference(x, dim)
    assert p.dtype == x.dtype and p.shape == x.shape
    err = (p.double() - r).abs().nan_to_num(0.0).max().item() if p.numel() else 0.0
    assert err <= ATOL[x.dtype], f"max error {err:.3g}"
    assert torch.equal(p.isnan(), r.isnan())


def assert_on_simplex(p, dim=-1, tol=1e-6):
    assert (p >= 0).all()
    assert torch.allclose(p.double().sum(dim), torch.ones((), dtype=torch.float64), atol=tol)


def closed_form_vjp(x, g, dim=-1):
    """s * (g - mean_S g) from the float64 reference output (numpy, independent code)."""
    p = np.moveaxis(reference(x, dim).numpy(), dim, -1)
    g = np.moveaxis(g.double().numpy(), dim, -1)
    s = (p > 0).astype(np.float64)
    mean = (s * g).sum(-1, keepdims=True) / np.maximum(s.sum(-1, keepdims=True), 1)
    return torch.from_numpy(np.moveaxis(s * (g - mean), -1, dim))


# ------------------------------------------------------------------ the reference itself


@pytest.mark.parametrize("scale", [0.1, 1.0, 30.0, 1e4])
def test_reference_satisfies_projection_optimality(scale):
    """KKT of argmin_{p in simplex} ||p - z||^2: p = z - tau on S, z <= tau off S, sum p = 1."""
    torch.manual_seed(0)
    z = (torch.randn(200, 40, dtype=torch.float64) * scale).round(decimals=2)  # with ties
    p = S.sparsemax_sort(z)
    assert_on_simplex(p, tol=1e-12)
    on = p > 0
    tau = ((z - p) * on).sum(-1, keepdim=True) / on.sum(-1, keepdim=True)
    tol = 1e-12 * (1 + scale)
    assert ((z - p - tau).abs() * on).max() <= tol
    assert (torch.where(on, torch.full_like(z, -1e300), z) <= tau + tol).all()


def test_reference_matches_numpy_alg1():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(50, 30)) * rng.choice([0.1, 1.0, 10.0], size=(50, 1))
    for row, p in zip(z, S.sparsemax_sort(torch.from_numpy(z)).numpy()):
        zs = np.sort(row)[::-1]
        k = np.arange(1, zs.size + 1)
        k_z = k[1 + k * zs > np.cumsum(zs)].max()
        np.testing.assert_allclose(p, np.maximum(row - (zs[:k_z].sum() - 1) / k_z, 0), atol=1e-12)


# ------------------------------------------------------------------ forward exactness


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-3, 0.3, 1.0, 10.0, 1e4])
@pytest.mark.parametrize("n", [50, 120, 1031])  # short, medium, long (blocked scan) rows
def test_random_rows_exact(backend, dtype, scale, n):
    torch.manual_seed(2)
    x = (torch.randn(32, 9 if n < 1000 else 1, n, dtype=torch.float64) * scale).to(dtype)
    p = S.sparsemax(x)
    assert_exact(p, x)
    assert_on_simplex(p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ties_and_all_equal_rows(backend, dtype):
    torch.manual_seed(3)
    ties = torch.randint(-3, 4, (300, 17)).to(dtype) / 2  # many exact ties, also at the max
    equal = torch.full((4, 33), 7.25, dtype=dtype)
    equal[1] = -1e4
    equal[2] = 1e4 / 3
    for x in (ties, equal):
        p = S.sparsemax(x)
        assert_exact(p, x)
        assert_on_simplex(p)
    uniform = torch.full((4, 33), 1 / 33.0, dtype=torch.float64)
    assert torch.allclose(S.sparsemax(equal).double(), uniform, atol=ATOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_support_long_rows(backend, dtype):
    """Rows of 2000 with tiny spread: support is (almost) the whole row."""
    torch.manual_seed(4)
    base = torch.tensor([[0.0], [5.0], [-1e4], [1e4]], dtype=torch.float64)
    x = (base + 1e-4 * torch.rand(4, 2000, dtype=torch.float64)).to(dtype)
    x = torch.cat([x, (torch.randn(4, 2000, dtype=torch.float64) * 0.01).to(dtype)])
    p = S.sparsemax(x)
    assert_exact(p, x)
    assert ((p > 0).sum(-1)[:4] == 2000).all()
    assert_on_simplex(p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_magnitudes(backend, dtype):
    """|z| up to 1e4, with supports of several entries near the max."""
    torch.manual_seed(5)
    wide = torch.empty(100, 50, dtype=torch.float64).uniform_(-1e4, 1e4)
    near = 1e4 - torch.rand(100, 50, dtype=torch.float64) * 2  # |z| ~ 1e4, support > 1
    for x in (wide.to(dtype), near.to(dtype), (-near).to(dtype)):
        p = S.sparsemax(x)
        assert_exact(p, x)
        assert_on_simplex(p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_masks_and_fully_masked_rows(backend, dtype):
    torch.manual_seed(6)
    x = torch.randn(40, 6, 30, dtype=dtype)
    x[torch.rand(x.shape) < 0.4] = NINF
    x[3, 2] = NINF  # a fully masked row
    x[7, :, 0] = NINF
    p = S.sparsemax(x)
    assert_exact(p, x)
    assert not p.isnan().any()
    assert (p[x == NINF] == 0).all()
    assert (p[3, 2] == 0).all()
    rows = (x > NINF).any(-1)
    assert torch.allclose(p.double().sum(-1)[rows], torch.ones(()).double(), atol=1e-6)


@pytest.mark.parametrize("dim", [0, 1, -2, 2])
def test_any_dim_and_non_contiguous(backend, dim):
    torch.manual_seed(7)
    base = torch.randn(12, 30, 8, 2)
    views = (base[..., 0], base.transpose(0, 1)[:, ::2, :, 1],
             base[:, :, :, 0].expand(2, 12, 30, 8)[1])
    for x in views:
        assert not x.is_contiguous()
        p = S.sparsemax(x, dim)
        assert_exact(p, x, dim)
        moved = S.sparsemax(x.movedim(dim, -1).contiguous()).movedim(-1, dim)
        assert torch.allclose(p, moved, atol=1e-7, rtol=0)


@settings(max_examples=examples(60), deadline=None)
@given(x=hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
                    elements=st.floats(-1e4, 1e4, width=32) | st.just(-np.inf)),
       data=st.data())
def test_property_every_backend_exact(x, data):
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1))
    scale = data.draw(st.sampled_from([1.0, 1e-3, 1e-4]))  # small spreads: large supports
    xt = torch.from_numpy(x) * scale
    for name in BACKENDS:
        if name == "native":
            _native_or_skip()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MMIN_SPARSEMAX_BACKEND", name)
            assert_exact(S.sparsemax(xt, dim), xt, dim)
            assert_exact(S.sparsemax(xt.double(), dim), xt.double(), dim)


def test_extreme_magnitudes(backend):
    """|z| beyond 2^53 (m - 1 rounds to m) and near the largest float."""
    x64 = torch.tensor([[1e17, 1e17 - 16, 0.0], [1.7e308, 1.7e308, -1.7e308],
                        [-1.7e308, -1.7e308, NINF]], dtype=torch.float64)
    x32 = torch.tensor([[3.4e38, 3.4e38, 1.0], [-3.4e38, -3.0e38, NINF],
                        [2.0 ** 60, 2.0 ** 60 - 2.0 ** 36, 0.0]], dtype=torch.float32)
    want = torch.tensor([[1.0, 0, 0], [0.5, 0.5, 0], [0.5, 0.5, 0]])
    assert torch.equal(S.sparsemax(x64).float(), want)
    assert torch.equal(S.sparsemax(x32), torch.tensor([[0.5, 0.5, 0], [0, 1.0, 0], [1.0, 0, 0]]))
    assert_exact(S.sparsemax(x32), x32)


def test_non_finite_rows_are_nan_only_there(backend):
    x = torch.randn(5, 8)
    x[1, 3] = float("nan")
    x[2, 0] = float("inf")
    x[3] = NINF
    x.requires_grad_(True)
    p = S.sparsemax(x)
    assert p[1].isnan().all() and p[2].isnan().all()
    assert (p[3] == 0).all()
    assert_exact(p[[0, 4]].detach(), x[[0, 4]].detach())
    p[[0, 3, 4]].sum().backward()  # no crash; finite gradient outside the NaN rows
    assert torch.isfinite(x.grad[[0, 3, 4]]).all()


@pytest.mark.parametrize("max_passes", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unconverged_rows_fall_back_to_the_exact_sort(backend, monkeypatch, max_passes, dtype):
    monkeypatch.setattr(S, "_MAX_PASSES", max_passes)
    torch.manual_seed(8)
    scales = torch.tensor([0.01, 1.0, 10.0], dtype=torch.float64).repeat(10)[:, None]
    x = (torch.randn(30, 200, dtype=torch.float64) * scales).to(dtype)
    x[0, :100] = NINF
    x[1] = 3.0
    assert_exact(S.sparsemax(x), x)


def test_native_reports_sort_fallback():
    _native_or_skip()
    x = torch.randn(50, 300)
    x[4] = NINF  # special rows never need the threshold
    p0, fell0 = N.forward(x, 0)
    p9, fell9 = N.forward(x, 64)
    assert fell0 == 49 and fell9 == 0
    assert torch.equal(p0, p9) or (p0 - p9).abs().max() <= 1e-7


def test_half_precision_inputs(backend):
    torch.manual_seed(9)
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(20, 50).to(dtype)
        x[0, :10] = NINF
        x.requires_grad_(True)
        p = S.sparsemax(x)
        assert p.dtype == dtype
        ref = reference(x.detach())
        assert (p.double() - ref).abs().max() <= (1e-3 if dtype == torch.float16 else 8e-3)
        p.backward(torch.randn_like(p))
        assert x.grad.dtype == dtype and torch.isfinite(x.grad).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_cuda_uses_the_torch_path(dtype):
    torch.manual_seed(13)
    x = torch.randn(64, 300, device="cuda").to(dtype)
    x[0, :10] = NINF
    x[1] = NINF
    x.requires_grad_(True)
    assert S.backend_for(x) == "torch"
    p = S.sparsemax(x)
    g = torch.randn_like(p)
    p.backward(g)
    tol = {torch.float16: 1e-3, torch.bfloat16: 8e-3, **ATOL}[dtype]
    assert p.dtype == dtype and x.grad.dtype == dtype
    assert (p.double().cpu() - reference(x.detach().cpu())).abs().max() <= tol
    want = closed_form_vjp(x.detach().cpu(), g.cpu())
    g_max = g.abs().max().item()
    assert (x.grad.double().cpu() - want).abs().max() <= 10 * max(tol, 1e-6) * (1 + g_max)


def test_threads_do_not_change_results():
    _native_or_skip()
    x = torch.randn(256, 700)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        p1, _ = N.forward(x, 32)
        g1 = N.backward(p1, x)
        torch.set_num_threads(max(2, n))  # the kernel splits rows over 2 pthreads
        p2, _ = N.forward(x, 32)
        g2 = N.backward(p2, x)
    finally:
        torch.set_num_threads(n)
    assert torch.equal(p1, p2) and torch.equal(g1, g2)


def test_edge_shapes_and_types(backend):
    assert S.sparsemax(torch.empty(0, 5)).shape == (0, 5)
    assert S.sparsemax(torch.empty(3, 0)).shape == (3, 0)
    assert S.sparsemax(torch.tensor(2.5)).item() == 1.0
    assert torch.equal(S.sparsemax(torch.tensor([[1.0]])), torch.ones(1, 1))
    with pytest.raises(TypeError):
        S.sparsemax(torch.arange(5))
    m = S.Sparsemax(dim=1)
    assert repr(m) == "Sparsemax(dim=1)"
    x = torch.randn(3, 4, 5)
    assert_exact(m(x), x, 1)


# ------------------------------------------------------------------ backward


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dim", [-1, 1])
def test_backward_equals_closed_form(backend, dtype, dim):
    torch.manual_seed(10)
    x = (torch.randn(16, 40, 25, dtype=torch.float64) * 2).to(dtype)
    x[torch.rand(x.shape) < 0.2] = NINF
    x[0, :, 0] = NINF  # fully masked rows along dim=1 ...
    x[0, 0, :] = NINF  # ... and along dim=-1
    x.requires_grad_(True)
    g = torch.randn(x.shape, dtype=dtype)
    S.sparsemax(x, dim).backward(g)
    want = closed_form_vjp(x.detach(), g, dim)
    assert not x.grad.isnan().any()
    assert (x.grad.double() - want).abs().max() <= ATOL[dtype] * 10
    assert (x.grad[x.detach() == NINF] == 0).all()


def test_backward_matches_autograd_through_the_sort():
    """Independent check: autograd differentiates the plain-torch sort reference."""
    torch.manual_seed(11)
    x = torch.randn(30, 12, dtype=torch.float64, requires_grad=True)
    g = torch.randn(30, 12, dtype=torch.float64)
    (want,) = torch.autograd.grad(S.sparsemax_sort(x), x, g)
    for name in BACKENDS:
        if name == "native":
            _native_or_skip()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("MMIN_SPARSEMAX_BACKEND", name)
            (got,) = torch.autograd.grad(S.sparsemax(x), x, g)
        assert torch.allclose(got, want, atol=1e-12), name


@pytest.mark.parametrize("dim", [-1, 0])
def test_gradcheck_and_gradgradcheck(backend, dim):
    torch.manual_seed(12)
    x = torch.randn(4, 3, 7, dtype=torch.float64) * 2
    x[1, 1, 2] = NINF
    x = x.transpose(1, 2).requires_grad_(True)  # non-contiguous too

    def f(t):
        return S.sparsemax(t, dim)

    assert torch.autograd.gradcheck(f, (x,), eps=1e-6, atol=1e-7)
    assert torch.autograd.gradgradcheck(f, (x,), eps=1e-6, atol=1e-7)


# ------------------------------------------------------------------ backend plumbing


def test_backend_selection(monkeypatch):
    x = torch.zeros(2)
    monkeypatch.setenv("MMIN_SPARSEMAX_BACKEND", "torch")
    assert S.backend_for(x) == "torch"
    monkeypatch.setenv("MMIN_SPARSEMAX_BACKEND", "SORT")
    assert S.backend_for(x) == "sort"
    monkeypatch.setenv("MMIN_SPARSEMAX_BACKEND", "fast")
    with pytest.raises(MMINConfigError):
        S.sparsemax(x)
    monkeypatch.delenv("MMIN_SPARSEMAX_BACKEND")
    try:
        N.kernels()
        assert S.backend_for(x) == "native"
    except RuntimeError:  # pragma: no cover
        assert S.backend_for(x) == "torch"


def test_without_compiler_auto_falls_back_and_native_raises(monkeypatch, tmp_path, caplog):
    monkeypatch.setattr(N, "_state", {})
    monkeypatch.setattr(S, "_logged", set())
    monkeypatch.setenv("MMIN_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    x = torch.randn(3, 10)
    monkeypatch.setenv("MMIN_SPARSEMAX_BACKEND", "native")
    with pytest.raises(MMINError, match="unavailable"):
        S.sparsemax(x)
    monkeypatch.setenv("MMIN_SPARSEMAX_BACKEND", "auto")
    with caplog.at_level(logging.WARNING, logger="MMSA"):
        p = S.sparsemax(x)
        S.sparsemax(x)
    assert S.backend_for(x) == "torch"
    assert_exact(p, x)
    assert sum("native kernel unavailable" in r.getMessage() for r in caplog.records) == 1


def test_build_is_cached_and_atomic(tmp_path):
    """Concurrent cold builds into one directory (atomic rename), then a cache hit."""
    if N._compiler() is None:  # pragma: no cover
        pytest.skip("no C compiler")
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        infos = [info for _, info in pool.map(lambda _: N.build(tmp_path), range(3))]
    assert len({i["path"] for i in infos}) == 1 and any(not i["cached"] for i in infos)
    _, info = N.build(tmp_path)
    assert info["cached"] and info["seconds"] == 0.0
    assert [f.name for f in tmp_path.iterdir()] == [tmp_path.joinpath(info["path"]).name]


def test_build_falls_back_to_plain_flags(tmp_path, monkeypatch):
    """A compiler without OpenMP (-fopenmp*) still gets the plain C99 build."""
    if N._compiler() is None:  # pragma: no cover
        pytest.skip("no C compiler")
    cc = tmp_path / "picky-cc"
    cc.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in -fopenmp*) exit 1;; esac; done\n'
                  f'exec {N._compiler()} "$@"\n')
    cc.chmod(0o755)
    monkeypatch.setenv("CC", str(cc))
    lib, info = N.build(tmp_path / "cache")
    assert info["flags"] == N.FLAG_SETS[-1]
    x = torch.randn(7, 33)
    p = torch.empty_like(x)
    assert lib.mmin_sparsemax_fwd_f32(x.data_ptr(), p.data_ptr(), 7, 33, 32, 1) == 0
    assert_exact(p, x)
