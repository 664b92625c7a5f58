"""mmin_plugin.modeling.dropout: the kernel's Philox is Random123's, its dropout is torch's map (keep
probability, scaling, kept values) with a mask that is recomputed instead of kept, the module swap, and
MMIN's ``dropout_kernel`` switch."""
import math

import pytest
import torch
from torch import nn

from mmin_plugin.modeling import _sparsemax_native as N
from mmin_plugin.modeling import dropout as D
from mmin_plugin.modeling.model import MMIN

from .builders import make_args, make_batch


@pytest.fixture(autouse=True)
def _native():
    try:
        N.kernels()
    except RuntimeError as exc:  # pragma: no cover - only without a C compiler
        pytest.skip(f"native kernel unavailable: {exc}")


# Random123's known answers for Philox4x32-10 (its tests/kat_vectors): counter, key, output
KAT = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
       ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
       ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]


@pytest.mark.parametrize("counter,key,want", KAT)
def test_philox_gives_random123s_known_answers(counter, key, want):
    assert N.philox4x32_10(counter, key) == want


def test_the_mask_is_philox_of_the_element_index():
    """Element i is kept iff word i mod 4 of Philox(counter (i // 4, 0), key seed) is below keep."""
    seed, keep, n = 0x0123456789ABCDEF, 3 * 2 ** 30, 203
    kept = N.dropout(torch.ones(n), seed, keep, 1.0) != 0
    key = (seed & 0xFFFFFFFF, seed >> 32)
    want = [N.philox4x32_10((i // 4, 0, 0, 0), key)[i % 4] < keep for i in range(n)]
    assert kept.tolist() == want


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_and_independence(p):
    torch.manual_seed(0)
    n = 1 << 20
    kept = (D.dropout(torch.ones(n), p) != 0).double()
    assert abs(kept.mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / n)
    # neighbours (inside a Philox block, and across blocks) are uncorrelated
    for lag in (1, 4, 1024):
        r = torch.corrcoef(torch.stack([kept[:-lag], kept[lag:]]))[0, 1].item()
        assert abs(r) < 5 / math.sqrt(n)


def test_kept_values_are_torchs_and_the_seed_comes_from_torchs_generator():
    x = torch.randn(4000)
    torch.manual_seed(3)
    a = D.dropout(x, 0.3)
    torch.manual_seed(3)
    b = D.dropout(x, 0.3)
    c = D.dropout(x, 0.3)
    assert torch.equal(a, b) and not torch.equal(b, c)  # manual_seed fixes it; each call draws anew
    scaled = x * (torch.tensor(1.0) / (1 - 0.3))  # 1 / (1 - p) rounded to x's dtype, as torch scales
    ref = torch.nn.functional.dropout(x, 0.3, True)
    assert torch.equal(ref[ref != 0], scaled[ref != 0]) and torch.equal(a[a != 0], scaled[a != 0])
    assert torch.equal(a == 0, (a == 0) & (x == x))  # dropped entries are exact zeros


def test_the_same_result_on_any_number_of_threads():
    x = torch.randn(3, 70001, dtype=torch.float64)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = N.dropout(x, 99, 2 ** 31, 2.0)
        torch.set_num_threads(max(2, before))
        many = N.dropout(x, 99, 2 ** 31, 2.0)
    finally:
        torch.set_num_threads(before)
    assert torch.equal(one, many)


def test_backward_is_the_same_mask_and_nothing_is_saved():
    x = torch.randn(64, 33, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = D.dropout(x, 0.4)
    assert saved == []  # torch's dropout keeps a float mask of x's size
    g = torch.randn(64, 33)
    y.backward(g)
    mask = (y != 0).to(x.dtype)
    scale = (y[y != 0] / x.detach()[y != 0])[0]
    assert torch.equal(x.grad, g * mask * scale)


def test_gradcheck_and_gradgradcheck():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    f = lambda t: D._KernelDropout.apply(t, 1234, D._keep_threshold(0.3), 1 / 0.7)  # noqa: E731 - a fixed mask
    assert torch.autograd.gradcheck(f, (x,))
    assert torch.autograd.gradgradcheck(f, (x,))


def test_edge_cases_follow_torch():
    x = torch.randn(10)
    assert D.dropout(x, 0.0) is x or torch.equal(D.dropout(x, 0.0), x)
    assert torch.equal(D.dropout(x, 1.0), torch.zeros(10))
    assert torch.equal(D.dropout(x, 0.5, training=False), x)
    assert D.dropout(torch.empty(0, 3), 0.5).shape == (0, 3)
    half = torch.randn(8, dtype=torch.float16)  # not a kernel dtype: torch's dropout
    assert D.dropout(half, 0.5).dtype == torch.float16
    strided = torch.randn(6, 8).t()  # not contiguous: made contiguous, mask over that order
    assert D.dropout(strided, 0.5).shape == (8, 6)
    assert D._keep_threshold(1e-30) == 2 ** 32 - 1


def test_module_swap_keeps_names_state_and_subclasses():
    class Special(nn.Dropout):
        pass

    net = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.2), nn.Sequential(nn.Dropout(0.3, inplace=True), Special(0.1)))
    keys = list(net.state_dict())
    D.use_kernel_dropout(net)
    assert type(net[1]) is D.Dropout and net[1].p == 0.2 and repr(net[1]) == "Dropout(p=0.2, inplace=False)"
    assert type(net[2][0]) is D.Dropout and net[2][0].inplace and type(net[2][1]) is Special
    assert list(net.state_dict()) == keys


def test_mmin_switch(tiny_bert):
    torch.manual_seed(0)
    on = MMIN(make_args(tiny_bert))
    torch.manual_seed(0)
    off = MMIN(make_args(tiny_bert, dropout_kernel=False))
    drops = lambda m: [type(x) for x in m.modules() if isinstance(x, nn.Dropout)]  # noqa: E731
    assert drops(on) and set(drops(on)) == {D.Dropout} and set(drops(off)) == {nn.Dropout}
    assert any(isinstance(x, D.Dropout) for x in on.features.bert.modules())  # BERT's dropouts too
    off.load_state_dict(on.state_dict())
    on.eval(), off.eval()
    text, audio, video, al, vl, y = make_batch(3)
    with torch.no_grad():  # no dropout in eval: the same network
        assert torch.equal(on(text, audio, video, al, vl)["M"], off(text, audio, video, al, vl)["M"])
    on.train()
    on.total_loss(on(text, audio, video, al, vl), y)[0].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in on.parameters())
