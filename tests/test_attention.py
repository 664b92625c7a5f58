"""mmin_plugin.modeling.attention: the fused sparsemax attention equals the reference composition
(scores, -inf mask, sparsemax, product) and the float64 oracle, in values and gradients, for any
key / query mask; the path switch."""
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mmin_plugin.errors import MMINConfigError
from mmin_plugin.modeling import _sparsemax_native as N
from mmin_plugin.modeling.attention import attention_path, sparsemax_attention, sparsemax_reference_attention
from mmin_plugin.modeling.sparsemax import sparsemax_sort


@pytest.fixture(autouse=True)
def _native(monkeypatch):
    try:
        N.kernels()
    except RuntimeError as exc:  # pragma: no cover - only without a C compiler
        pytest.skip(f"native kernel unavailable: {exc}")
    monkeypatch.delenv("MMIN_ATTENTION", raising=False)
    monkeypatch.delenv("MMIN_SPARSEMAX_BACKEND", raising=False)


def _inputs(seed, B, h, Lq, Lk, dh, dtype, scale):
    g = torch.Generator().manual_seed(seed)
    # (B, L, h, dh) viewed as (B, h, L, dh), as MMIN's CA module builds them
    q, k, v = (torch.randn(B, L, h, dh, generator=g, dtype=dtype).transpose(1, 2) for L in (Lq, Lk, Lk))
    km, qm = torch.rand(B, Lk, generator=g) > 0.3, torch.rand(B, Lq, generator=g) > 0.3
    return q * scale, k, v, km, qm, torch.randn(B, h, Lq, dh, generator=g, dtype=dtype)


def _oracle(q, k, v, km, qm, dout):
    """float64 sort-based sparsemax through plain autograd: values and the true gradients."""
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    s = (q @ k.transpose(-1, -2)).masked_fill(~km[:, None, None, :], float("-inf"))
    out = sparsemax_sort(s, -1) @ v
    out = out * qm[:, None, :, None]
    (out * dout.double()).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def _fused(q, k, v, km, qm, dout, path="fused"):
    os.environ["MMIN_ATTENTION"] = path
    try:
        q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
        out = sparsemax_attention(q, k, v, km, qm) * qm[:, None, :, None]  # padded query rows are undefined
        (out * dout).sum().backward()
        return out.detach(), q.grad, k.grad, v.grad
    finally:
        del os.environ["MMIN_ATTENTION"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2 ** 16), B=st.integers(1, 3), h=st.integers(1, 3), Lq=st.integers(1, 9),
       Lk=st.sampled_from([1, 2, 7, 50, 130, 600]), dh=st.sampled_from([1, 4, 16]),
       dtype=st.sampled_from([torch.float32, torch.float64]), scale=st.sampled_from([0.1, 1.0, 10.0]))
def test_fused_equals_the_float64_oracle_in_values_and_gradients(seed, B, h, Lq, Lk, dh, dtype, scale):
    x = _inputs(seed, B, h, Lq, Lk, dh, dtype, scale)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    for got, want in zip(_fused(*x), _oracle(*x)):
        assert got.dtype == dtype
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * max(1.0, scale))


def test_fused_equals_the_reference_composition_at_mmin_shapes():
    x = _inputs(0, 4, 8, 60, 45, 16, torch.float32, 1 / 3)
    for got, want in zip(_fused(*x), _fused(*x, path="reference")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_padded_keys_get_nothing_and_empty_rows_give_zero():
    q, k, v, km, qm, dout = _inputs(1, 2, 2, 5, 6, 4, torch.float64, 1.0)
    km[0] = False  # sample 0: no real key
    qm[:] = True
    v2, k2 = v.clone(), k.clone()
    v2[~km[:, None, :, None].expand_as(v)] = 1e6  # garbage in padded keys changes nothing
    k2[~km[:, None, :, None].expand_as(k)] = -1e6
    a = _fused(q, k, v, km, qm, dout)
    b = _fused(q, k2, v2, km, qm, dout)
    torch.testing.assert_close(a[0], b[0])
    assert torch.equal(a[0][0], torch.zeros_like(a[0][0])) and torch.equal(a[1][0], torch.zeros_like(a[1][0]))
    assert torch.equal(b[2][~km[:, None, :, None].expand_as(k)], torch.zeros(int((~km).sum()) * 2 * 4,
                                                                          dtype=torch.float64))


def test_path_switch(monkeypatch):
    q = torch.zeros(1, 1, 1, 2)
    assert attention_path(q) == "fused"
    assert attention_path(q.half()) == "reference"
    monkeypatch.setenv("MMIN_ATTENTION", "reference")
    assert attention_path(q) == "reference"
    monkeypatch.setenv("MMIN_ATTENTION", "fused")
    monkeypatch.setenv("MMIN_SPARSEMAX_BACKEND", "sort")  # the chosen sparsemax backend is respected
    assert attention_path(q) == "reference"
    monkeypatch.setenv("MMIN_ATTENTION", "flash")
    with pytest.raises(MMINConfigError, match="MMIN_ATTENTION"):
        attention_path(q)


def test_reference_returns_its_weights():
    q, k, v, km, _, _ = _inputs(2, 2, 2, 3, 5, 4, torch.float32, 1.0)
    out, w = sparsemax_reference_attention(q, k, v, km, return_weights=True)
    torch.testing.assert_close(out, w @ v)
    assert torch.equal(w[~km[:, None, None, :].expand_as(w)], torch.zeros(int((~km).sum()) * 2 * 3))


def _ca_module(d=16, seed=0, dtype=torch.float32):
    from torch import nn
    torch.manual_seed(seed)
    norms = (nn.LayerNorm(d), nn.LayerNorm(d))
    projections = tuple(nn.Linear(d, d) for _ in range(3))
    for m in (*norms, *projections):
        m.to(dtype)
        for p in m.parameters():  # away from LayerNorm's (1, 0) start, so its gradients are tested too
            p.data += 0.1 * torch.randn_like(p)
    return norms, projections


def _projected(x_q, x_kv, km, qm, dout, path, heads=4, dtype=torch.float32):
    """path 'fused': projected_sparsemax_attention; 'unprojected': the fused kernel on project_qkv's q, k, v
    (kept by autograd); 'reference': the plain composition."""
    from mmin_plugin.modeling.attention import project_qkv, projected_sparsemax_attention
    norms, projections = _ca_module(x_q.shape[-1], dtype=dtype)
    x_q, x_kv = (x.detach().clone().requires_grad_() for x in (x_q, x_kv))
    os.environ["MMIN_ATTENTION"] = "fused" if path == "unprojected" else path
    try:
        if path == "unprojected":
            out = sparsemax_attention(*project_qkv(x_q, x_kv, norms, projections, heads), km, qm)
        else:
            out = projected_sparsemax_attention(x_q, x_kv, norms, projections, heads, km, qm)
        out = out * qm[:, None, :, None]
    finally:
        del os.environ["MMIN_ATTENTION"]
    (out * dout).sum().backward()
    params = [p for m in (*norms, *projections) for p in m.parameters()]
    return [out.detach(), x_q.grad, x_kv.grad, *(p.grad for p in params)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("Lq,Lk", [(7, 30), (40, 9), (1, 1)])
def test_projected_attention_equals_the_unfused_module_in_values_and_every_gradient(dtype, Lq, Lk):
    g = torch.Generator().manual_seed(Lq * 100 + Lk)
    B, d, heads = 3, 16, 4
    x_q, x_kv = torch.randn(B, Lq, d, generator=g, dtype=dtype), torch.randn(B, Lk, d, generator=g, dtype=dtype)
    km, qm = torch.rand(B, Lk, generator=g) > 0.3, torch.rand(B, Lq, generator=g) > 0.3
    km[:, 0] = True
    dout = torch.randn(B, heads, Lq, d // heads, generator=g, dtype=dtype)
    fused = _projected(x_q, x_kv, km, qm, dout, "fused", heads, dtype)
    unprojected = _projected(x_q, x_kv, km, qm, dout, "unprojected", heads, dtype)
    plain = _projected(x_q, x_kv, km, qm, dout, "reference", heads, dtype)
    assert torch.equal(fused[0], unprojected[0])  # the same operations: the same forward, bit for bit
    tol = 1e-11 if dtype == torch.float64 else 2e-5
    for got, want, ref in zip(fused, unprojected, plain):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        torch.testing.assert_close(got, ref, rtol=tol, atol=tol)


def test_projected_attention_keeps_no_projection_for_the_backward():
    """Issue 27 (peak memory): on the fused path a CA layer saves its inputs, the parameters and the
    per-row thresholds, none of LN(x_q), LN(x_kv), q, k, v: under half of what the unfused module keeps."""
    from mmin_plugin.modeling.attention import projected_sparsemax_attention
    norms, projections = _ca_module(32)
    x_q, x_kv = torch.randn(2, 60, 32, requires_grad=True), torch.randn(2, 80, 32, requires_grad=True)

    def saved_activation_bytes(path):
        seen = {}

        def pack(t):
            if t.dim() >= 2 and t.shape[0] == 2:  # activations (batch first), not the parameters
                seen[(t.untyped_storage().data_ptr(), t.dtype)] = t.untyped_storage().nbytes()
            return t

        os.environ["MMIN_ATTENTION"] = path
        try:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                projected_sparsemax_attention(x_q, x_kv, norms, projections, 8)
        finally:
            del os.environ["MMIN_ATTENTION"]
        return sum(seen.values())

    activations = (60 + 80) * 2 * 32 * 4  # x_q and x_kv themselves
    fused, plain = saved_activation_bytes("fused"), saved_activation_bytes("reference")
    assert fused <= activations + 2 * 8 * 60 * 2 * 8 + 2 * 80  # + (max, t) in float64 per row, the key mask
    assert plain >= 3 * activations


def test_the_kernel_refuses_what_it_cannot_read():
    q = torch.zeros(1, 2, 1, 4)
    km = torch.ones(1, 2, dtype=torch.uint8)
    with pytest.raises(TypeError, match="float32/float64"):
        N.attention_forward(q.bfloat16(), q.bfloat16(), q.bfloat16(), km, None, 8)
    with pytest.raises(TypeError, match="contiguous"):
        N.attention_forward(q.transpose(1, 3), q, q, km, None, 8)
    with pytest.raises(TypeError, match="uint8"):
        N.attention_forward(q, q, q, km.bool(), None, 8)
