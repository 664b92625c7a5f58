"""Dynamic padding (mmin_plugin.modeling.padding): the batch is cut to its longest real sequence,
and MMIN's outputs and gradients are those of the untrimmed batch (to 1e-5)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmin_plugin.modeling.model import MMIN
from mmin_plugin.modeling.padding import longest_real, trim_to_longest

from .builders import make_args


def test_trim_cuts_to_the_longest_real_step_of_each_modality():
    B, L, La, Lv = 3, 9, 12, 10
    mask = torch.zeros(B, L)
    mask[0, :4], mask[1, :6], mask[2, :2] = 1, 1, 1
    text = torch.stack([mask * 7, mask, torch.zeros(B, L)], 1)
    audio, video = torch.randn(B, La, 5), torch.randn(B, Lv, 7)
    t, a, v = trim_to_longest(text, audio, video, torch.tensor([3, 8, 1]), [2, 2, 5], use_bert=True)
    assert (t.shape, a.shape, v.shape) == ((B, 3, 6), (B, 8, 5), (B, 5, 7))
    assert torch.equal(a, audio[:, :8]) and torch.equal(v, video[:, :5]) and torch.equal(t, text[..., :6])
    # features without BERT: trailing all-zero rows are padding, position 0 always counts
    feats = torch.zeros(B, L, 4)
    feats[1, :3] = 1.0
    assert trim_to_longest(feats, None, None, use_bert=False)[0].shape == (B, 3, 4)
    assert trim_to_longest(torch.zeros(B, L, 4), None, None, use_bert=False)[0].shape == (B, 1, 4)
    # no lengths: unchanged; zero lengths: one (masked) step; lengths beyond L: clamped
    assert trim_to_longest(None, audio, None)[1].shape == audio.shape
    assert longest_real(audio, torch.zeros(B)) == 1 and longest_real(audio, [99, 1, 1]) == La


def _batch(seed, text_lens, audio_lens, video_lens, L=10, La=13, Lv=11):
    g = torch.Generator().manual_seed(seed)
    B = len(text_lens)
    mask = (torch.arange(L)[None] < torch.tensor(text_lens)[:, None]).float()
    ids = torch.randint(5, 100, (B, L), generator=g).float() * mask
    text = torch.stack([ids, mask, torch.zeros(B, L)], 1)
    audio, video = torch.randn(B, La, 5, generator=g), torch.randn(B, Lv, 7, generator=g)
    al, vl = torch.tensor(audio_lens), torch.tensor(video_lens)
    for b in range(B):  # what a file holds past the real length: zeros
        audio[b, al[b]:], video[b, vl[b]:] = 0, 0
    return text, audio, video, al, vl, torch.rand(B, 1, generator=g) * 6 - 3


@pytest.fixture(scope="module")
def models(tiny_bert):
    out = {}
    for name, over in (("default", {}), ("ca_variants", {"ca_ffn": True, "ca_positions": True})):
        torch.manual_seed(0)
        out[name] = MMIN(make_args(tiny_bert, **over))
    return out


def _run(model, batch, trim):
    text, audio, video, al, vl, y = batch
    model.zero_grad(set_to_none=True)
    out = model(text, audio, video, audio_lengths=al, vision_lengths=vl, trim_padding=trim)
    loss, _ = model.total_loss(out, y)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in out.items() if torch.is_tensor(v)}, grads


lengths = st.integers(2, 5).flatmap(lambda B: st.tuples(
    st.lists(st.integers(1, 10), min_size=B, max_size=B),   # text tokens ([CLS] included)
    st.lists(st.integers(0, 13), min_size=B, max_size=B),   # audio steps (0: a missing clip)
    st.lists(st.integers(0, 11), min_size=B, max_size=B)))  # video steps


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lens=lengths, seed=st.integers(0, 2 ** 16), variant=st.sampled_from(["default", "ca_variants"]))
def test_trimmed_batch_gives_the_untrimmed_outputs_and_gradients(models, lens, seed, variant):
    """Property: over random real lengths (every padding pattern the file can hold, empty clips
    included), trimming changes no output, loss term or parameter gradient beyond 1e-5.
    eval() only switches dropout off (its draws depend on the tensor shapes); gradients still flow."""
    model = models[variant].eval()
    batch = _batch(seed, *lens)
    ref_out, ref_grads = _run(model, batch, trim=False)
    out, grads = _run(model, batch, trim=True)
    assert ref_out.keys() == out.keys() and ref_grads.keys() == grads.keys()
    for k in ref_out:
        torch.testing.assert_close(out[k], ref_out[k], rtol=1e-5, atol=1e-5, msg=k)
    for n in ref_grads:
        torch.testing.assert_close(grads[n], ref_grads[n], rtol=1e-5, atol=1e-5, msg=n)


def test_trimming_really_shortens_what_the_network_sees(models, monkeypatch):
    """The equality above is not vacuous: with short clips the LSTMs get the trimmed lengths."""
    model = models["default"].eval()
    seen, lstm = [], type(model.features.audio_rnn)
    original = lstm.forward

    def recording(self, x, lengths):
        seen.append(x.shape[1])
        return original(self, x, lengths)

    monkeypatch.setattr(lstm, "forward", recording)
    batch = _batch(1, [4, 6], [3, 5], [2, 2])
    with torch.no_grad():
        model(*batch[:3], audio_lengths=batch[3], vision_lengths=batch[4])
        model(*batch[:3], audio_lengths=batch[3], vision_lengths=batch[4], trim_padding=False)
    assert seen == [2, 5, 11, 13]  # (video, audio) trimmed, then untrimmed
