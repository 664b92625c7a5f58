"""mmin_plugin.modeling.activations: a feed-forward activation folded into the next linear layer keeps only
its input for the backward, with the same values and gradients; the BERT surgery keeps names and outputs."""
import pytest
import torch
from torch import nn

from mmin_plugin.modeling.activations import ActivationLinear, _ActivationLinear, recompute_feed_forward


def _pair(seed=0, d_in=12, d_out=5):
    torch.manual_seed(seed)
    linear = nn.Linear(d_in, d_out)
    return linear, ActivationLinear(nn.GELU(), linear)


def _saved_bytes(fn):
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


@pytest.mark.parametrize("bias", [True, False])
def test_same_values_and_gradients_as_the_composition(bias):
    torch.manual_seed(1)
    linear = nn.Linear(12, 5, bias=bias)
    folded = ActivationLinear(nn.GELU(), linear)
    h = torch.randn(3, 7, 12, requires_grad=True)
    g = torch.randn(3, 7, 5)
    y_ref = linear(nn.functional.gelu(h))
    grads_ref = torch.autograd.grad(y_ref, [h, *linear.parameters()], g)
    y = folded(h)
    grads = torch.autograd.grad(y, [h, *folded.parameters()], g)
    assert torch.equal(y, y_ref)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_gradcheck():
    linear = nn.Linear(4, 3).double()
    h = torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True)
    f = lambda x, w, b: _ActivationLinear.apply(x, w, b, nn.GELU())  # noqa: E731
    assert torch.autograd.gradcheck(f, (h, linear.weight, linear.bias))


def test_keeps_the_input_only():
    linear, folded = _pair(d_in=64)
    h = torch.randn(32, 64, requires_grad=True)
    _, plain = _saved_bytes(lambda: linear(nn.functional.gelu(h)))
    _, kept = _saved_bytes(lambda: folded(h))
    weight = linear.weight.numel() * 4
    assert plain == 2 * h.numel() * 4 + weight  # h for GELU, GELU(h) for the linear layer
    assert kept == h.numel() * 4 + weight


def test_autocast_and_no_grad_run_the_plain_composition():
    linear, folded = _pair()
    h = torch.randn(4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert folded(h).dtype == linear(nn.functional.gelu(h)).dtype == torch.bfloat16
    with torch.no_grad():
        assert torch.equal(folded(h), linear(nn.functional.gelu(h)))


def test_bert_surgery_keeps_names_outputs_and_gradients(tiny_bert):
    from transformers import BertModel

    plain = BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).eval()  # eval: no dropout
    folded = recompute_feed_forward(BertModel.from_pretrained(tiny_bert, add_pooling_layer=False).eval())
    assert list(folded.state_dict()) == list(plain.state_dict())
    layers = [m for m in folded.modules() if isinstance(m, ActivationLinear)]
    assert len(layers) == plain.config.num_hidden_layers
    assert recompute_feed_forward(folded) is folded and len([m for m in folded.modules()
                                                             if isinstance(m, ActivationLinear)]) == len(layers)
    ids = torch.randint(5, 100, (3, 9))
    outs = [m(input_ids=ids).last_hidden_state for m in (plain, folded)]
    assert torch.equal(outs[0], outs[1])
    g = torch.randn_like(outs[0])
    grads = [torch.autograd.grad(o, list(m.parameters()), g) for o, m in zip(outs, (plain, folded))]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
