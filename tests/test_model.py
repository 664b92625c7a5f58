"""The MMIN network itself: gradients, finiteness, masking/padding invariance, batch independence,
gradient reversal (and where it must not act), the guided step's read-out and the Table 2 ablation
switches."""
import copy

import pytest
import torch

from mmin_plugin.constants import MODALITIES
from mmin_plugin.errors import MMINConfigError
from mmin_plugin.modeling.losses import grad_reverse, modality_cross_entropy
from mmin_plugin.modeling.model import MMIN, CrossAttention, MMINConfig, support_sizes

from .builders import make_args, make_batch


def _ca_config(**over):
    """A small config for the CA modules: width 16, 4 heads, N = 2 layers, no dropout unless given."""
    return MMINConfig(**{"d_model": 16, "nheads": 4, "fine_layers": 2, "dropout": 0.0, "attn_dropout": 0.0, **over})


def _model(tiny_bert, seed=0, **over):
    torch.manual_seed(seed)
    return MMIN(make_args(tiny_bert, **over))


def test_every_parameter_gets_a_gradient_and_outputs_are_finite(tiny_bert):
    model = _model(tiny_bert)
    model.train()
    text, audio, video, al, vl, y = make_batch(seed=1)
    out = model(text, audio, video, audio_lengths=al, vision_lengths=vl)
    loss, terms = model.total_loss(out, y)
    for k, v in terms.items():
        assert torch.isfinite(v), k
    assert terms["L_sep"] > 0 and terms["L_ac"] > 0 and terms["L_ap"] > 0
    loss.backward()
    missing = [n for n, p in model.named_parameters()
               if p.requires_grad and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("extra_a,extra_v", [(0, 0), (7, 5)], ids=["same-length", "longer-padding"])
def test_garbage_padding_beyond_lengths_changes_nothing(tiny_bert, extra_a, extra_v):
    """Random frames after each sequence's real length (in the padding the file already has, and
    in extra padded steps) must not change the prediction: lengths decide what is signal."""
    model = _model(tiny_bert).eval()
    text, audio, video, al, vl, _ = make_batch(seed=2)
    g = torch.Generator().manual_seed(99)
    B = audio.shape[0]
    audio2 = torch.cat([audio, torch.zeros(B, extra_a, audio.shape[2])], 1)
    video2 = torch.cat([video, torch.zeros(B, extra_v, video.shape[2])], 1)
    for b in range(B):
        audio2[b, al[b]:] = torch.randn(audio2[b, al[b]:].shape, generator=g) * 3
        video2[b, vl[b]:] = torch.randn(video2[b, vl[b]:].shape, generator=g) * 3
    assert (audio2[:, audio.shape[1]:] != 0).any() or extra_a == 0
    assert not torch.equal(audio2[:, :audio.shape[1]], audio)  # the garbage is really there
    with torch.no_grad():
        ref = model(text, audio, video, audio_lengths=al, vision_lengths=vl)["M"]
        out = model(text, audio2, video2, audio_lengths=al, vision_lengths=vl)["M"]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_values_beyond_lengths_are_ignored(tiny_bert):
    model = _model(tiny_bert).eval()
    text, audio, video, al, vl, _ = make_batch(seed=3)
    noisy_a, noisy_v = audio.clone(), video.clone()
    for b in range(audio.shape[0]):
        noisy_a[b, al[b]:] = 5.0
        noisy_v[b, vl[b]:] = -5.0
    with torch.no_grad():
        ref = model(text, audio, video, audio_lengths=al, vision_lengths=vl)["M"]
        out = model(text, noisy_a, noisy_v, audio_lengths=al, vision_lengths=vl)["M"]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_eval_prediction_does_not_depend_on_the_batch(tiny_bert):
    model = _model(tiny_bert).eval()
    text, audio, video, al, vl, _ = make_batch(seed=4, batch=5)
    with torch.no_grad():
        full = model(text, audio, video, audio_lengths=al, vision_lengths=vl)["M"]
        for i in range(5):
            one = model(text[i:i + 1], audio[i:i + 1], video[i:i + 1], audio_lengths=al[i:i + 1],
                        vision_lengths=vl[i:i + 1])["M"]
            torch.testing.assert_close(one, full[i:i + 1], rtol=1e-4, atol=1e-5)


def test_missing_lengths_mean_full_length(tiny_bert):
    model = _model(tiny_bert).eval()
    text, audio, video, _, _, _ = make_batch(seed=5)
    B = audio.shape[0]
    full_a, full_v = torch.full((B,), audio.shape[1]), torch.full((B,), video.shape[1])
    with torch.no_grad():
        a = model(text, audio, video)["M"]
        b = model(text, audio, video, audio_lengths=full_a, vision_lengths=full_v)["M"]
    torch.testing.assert_close(a, b)


def test_zero_length_sequences_give_finite_outputs_and_loss(tiny_bert):
    model = _model(tiny_bert).train()
    text, audio, video, al, vl, y = make_batch(seed=6)
    al[0] = 0
    vl[1] = 0
    al[2] = 0
    vl[2] = 0
    out = model(text, audio, video, audio_lengths=al, vision_lengths=vl)
    loss, _ = model.total_loss(out, y)
    assert torch.isfinite(out["M"]).all() and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_gradient_reversal_flips_and_scales():
    x = torch.randn(4, 3, requires_grad=True)
    g = torch.randn(4, 3)
    y = grad_reverse(x, 0.7)
    torch.testing.assert_close(y, x)
    y.backward(g)
    torch.testing.assert_close(x.grad, -0.7 * g)


def test_common_encoder_receives_reversed_discriminator_gradient(tiny_bert):
    """Through L_ac, D's gradient pushes the common encoder the opposite way (eq. 3 + GRL)."""
    model = _model(tiny_bert, adv_objective="reversal").eval()  # no dropout: both passes see the same D
    cin = model.cin
    h = {m: torch.randn(6, cin.common[0].in_features) for m in cin.modalities}
    _, _, losses = cin(h)
    grad_rev = torch.autograd.grad(losses["L_ac"], cin.common[0].weight)[0]
    lam = cin.grl_lambda
    cin.grl_lambda = 0.0 - 1.0  # reversal with -1 == plain gradient
    _, _, losses = cin(h)
    grad_plain = torch.autograd.grad(losses["L_ac"], cin.common[0].weight)[0]
    cin.grl_lambda = lam
    torch.testing.assert_close(grad_rev, -lam * grad_plain)


@pytest.mark.parametrize("modality,arg", [("text", 0), ("audio", 1), ("video", 2)])
def test_without_a_modality_its_input_changes_nothing(tiny_bert, modality, arg):
    model = _model(tiny_bert, ablation=[modality]).eval()
    inputs = list(make_batch(seed=7)[:3])
    with torch.no_grad():
        ref = model(*inputs)["M"]
        changed = copy.deepcopy(inputs)
        if arg == 0:
            changed[0][:, 0] = torch.randint(5, 90, changed[0][:, 0].shape).float() * changed[0][:, 1]
        else:
            changed[arg] = torch.randn_like(changed[arg]) * 3
        out = model(*changed)["M"]
        full = _model(tiny_bert).eval()
        assert not torch.allclose(full(*inputs)["M"], full(*changed)["M"])
    torch.testing.assert_close(out, ref)
    assert all(modality not in n.split(".") and f"{modality}_" not in n for n, _ in model.named_parameters()
               if n.startswith(("cin.private", "fin.")))


def test_without_cin_and_without_fin_drop_fusion_tokens_only(tiny_bert):
    full = _model(tiny_bert)
    no_cin = _model(tiny_bert, ablation=["cin"])
    no_fin = _model(tiny_bert, ablation=["fin"])
    assert full.fusion.head[0].in_features == 9 * full.fusion.head[0].out_features
    assert no_cin.fusion.head[0].in_features == 3 * full.fusion.head[0].out_features
    assert no_fin.fusion.head[0].in_features == 6 * full.fusion.head[0].out_features
    assert no_fin.fin is None and no_cin.fin is not None
    # w/o CIN keeps the CIN representation learning and its losses
    text, audio, video, al, vl, y = make_batch(seed=8)
    out = no_cin(text, audio, video, audio_lengths=al, vision_lengths=vl)
    loss, terms = no_cin.total_loss(out, y)
    loss.backward()
    assert no_cin.cin.private["text"][0].weight.grad.abs().sum() > 0
    assert no_cin.weights == full.weights


@pytest.mark.parametrize("name,weight", [("sep", "alpha"), ("ac", "beta"), ("ap", "gamma")])
def test_loss_ablation_zeroes_its_weight_and_its_gradient(tiny_bert, name, weight):
    model = _model(tiny_bert, ablation=[name])
    assert model.weights[weight] == 0.0
    others = {k: v for k, v in model.weights.items() if k != weight}
    assert all(v > 0 for v in others.values())
    text, audio, video, al, vl, y = make_batch(seed=9)
    out = model(text, audio, video, audio_lengths=al, vision_lengths=vl)
    total, terms = model.total_loss(out, y)
    adv = {**terms, "L_ac": out["L_adv"]}  # beta weights L_adv (= L_ac under the literal 'reversal')
    rest = terms["L_senti"] + sum(model.weights[w] * adv[t] for w, t in
                                  (("alpha", "L_sep"), ("beta", "L_ac"), ("gamma", "L_ap")) if w != weight)
    torch.testing.assert_close(total, rest)


def test_total_loss_is_eq6(tiny_bert):
    model = _model(tiny_bert, alpha=0.5, beta=0.25, gamma=2.0, adv_objective="reversal")  # eq. 3 literally
    text, audio, video, al, vl, y = make_batch(seed=10)
    out = model(text, audio, video, audio_lengths=al, vision_lengths=vl)
    total, t = model.total_loss(out, y)
    expected = ((out["M"] - y) ** 2).mean() + 0.5 * t["L_sep"] + 0.25 * t["L_ac"] + 2.0 * t["L_ap"]
    torch.testing.assert_close(total, expected)


def test_pre_extracted_text_features_without_bert(tiny_bert):
    model = _model(tiny_bert, use_bert=False, feature_dims=[12, 5, 7])
    text = torch.randn(3, 9, 12)
    text[:, 6:] = 0
    audio, video = torch.randn(3, 11, 5), torch.randn(3, 8, 7)
    out = model(text, audio, video)
    assert out["M"].shape == (3, 1) and torch.isfinite(out["M"]).all()
    assert not hasattr(model.features, "bert")


def test_ca_module_masks_padded_keys_exactly():
    torch.manual_seed(0)
    ca = CrossAttention(_ca_config()).eval()
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 4:] = False
    mask[1, :] = False  # nothing to attend to: zero attention, residual (+ output bias) only
    y, attn = ca(q, kv, mask, return_attention=True)
    assert (attn[0, :, :, 4:] == 0).all()
    torch.testing.assert_close(attn[0].sum(-1), torch.ones(4, 5))
    assert (attn[1] == 0).all()
    torch.testing.assert_close(y[1], q[1] + ca.out.bias.detach().expand_as(q[1]))  # empty context


def test_bad_config_is_a_clear_error(tiny_bert):
    with pytest.raises(MMINConfigError, match="nheads"):
        _model(tiny_bert, d_model=30, nheads=8)
    with pytest.raises(MMINConfigError, match="'ablation'.*textt"):
        _model(tiny_bert, ablation=["textt"])
    with pytest.raises(MMINConfigError, match="at least one must remain"):
        _model(tiny_bert, ablation="text,video,audio")
    with pytest.raises(MMINConfigError, match="'cin' and 'fin'"):  # used to crash in torch.stack
        _model(tiny_bert, ablation=["cin", "fin"])


def test_model_reads_the_config_object(tiny_bert):
    args = make_args(tiny_bert, ablation="text, sep", disc_hidden=5)
    model = MMIN(args)
    assert isinstance(model.config, MMINConfig) and model.config.ablation == ["text", "sep"]
    assert model.cin.discriminator.fc1.out_features == 5 and model.weights["alpha"] == 0.0
    torch.manual_seed(0)
    a = MMIN(args)
    torch.manual_seed(0)
    b = MMIN(MMINConfig.from_args(args))  # a config object is accepted as it is
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# --- gradient directions: only the common codes' path from L_ac is reversed ---------------------

def _cin_inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(6, model.cin.common[0].in_features, generator=g) for m in model.cin.modalities}


def test_discriminator_descends_on_l_ac(tiny_bert):
    """D's own gradient from L_ac is the plain cross-entropy gradient (D learns to classify the
    common codes); only the common encoder sees it reversed."""
    model = _model(tiny_bert).eval()
    cin = model.cin
    h = _cin_inputs(model)
    _, common, losses = cin(h)
    d_params = list(cin.discriminator.parameters())
    got = torch.autograd.grad(losses["L_ac"], d_params)
    labels = [MODALITIES.index(m) for m in cin.modalities]
    plain = modality_cross_entropy([cin.discriminator(common[m].detach()) for m in cin.modalities], labels)
    want = torch.autograd.grad(plain, d_params)
    for g_got, g_want in zip(got, want):
        assert g_want.abs().sum() > 0
        torch.testing.assert_close(g_got, g_want)


@pytest.mark.parametrize("modality", MODALITIES)
def test_private_encoder_descends_on_l_ap(tiny_bert, modality):
    """The private encoders' gradient from L_ap is NOT reversed: they learn to be recognisable."""
    model = _model(tiny_bert).eval()
    cin = model.cin
    h = _cin_inputs(model, seed=1)
    _, _, losses = cin(h)
    weight = cin.private[modality][0].weight
    got = torch.autograd.grad(losses["L_ap"], weight)[0]
    labels = [MODALITIES.index(m) for m in cin.modalities]
    plain = modality_cross_entropy([cin.discriminator(cin.private[m](h[m])) for m in cin.modalities], labels)
    want = torch.autograd.grad(plain, weight)[0]
    assert want.abs().sum() > 0
    torch.testing.assert_close(got, want)


# --- the coarse-guided step reads each modality's own output position ---------------------------

@pytest.mark.parametrize("modality", MODALITIES)
def test_guided_step_reads_the_modality_own_position(tiny_bert, modality):
    """The guided step queries with the stack [h_L^C, h_V^C, h_A^C] and reads "the corresponding
    vector". Pinned: f_m equals querying with h_m^C alone (each query position attends on its own),
    and differs from what the other positions give (reading position 0 for every modality fails)."""
    model = _model(tiny_bert).eval()
    fin = model.fin
    g = torch.Generator().manual_seed(5)
    B, d = 3, model.config.d_model
    lens = {"text": 6, "video": 7, "audio": 8}
    seqs = {m: torch.randn(B, lens[m], d, generator=g) for m in MODALITIES}
    masks = {m: torch.ones(B, lens[m], dtype=torch.bool) for m in MODALITIES}
    masks["audio"][0, 5:] = False
    common = {m: torch.randn(B, d, generator=g) for m in MODALITIES}
    with torch.no_grad():
        fine = fin(seqs, masks, common)
        # the fine sequence of m, done independently: FIN's pair outputs concatenated in time
        others = [b for b in MODALITIES if b != modality]
        seq_m = torch.cat([fin.cross[f"{modality}_from_{b}"](seqs[modality], seqs[b], masks[b]) for b in others], 1)
        mask_m = torch.cat([masks[modality]] * len(others), 1)
        alone = {m: fin.guided[modality](common[m][:, None], seq_m, mask_m)[:, 0] for m in MODALITIES}  # (B, d)
    torch.testing.assert_close(fine[modality], alone[modality], rtol=1e-5, atol=1e-6)
    for m in MODALITIES:
        if m != modality:
            assert not torch.allclose(fine[modality], alone[m], atol=1e-3)


# --- attention you can look at ---------------------------------------------------------------------

def test_return_attention_names_shapes_and_masks(tiny_bert):
    model = _model(tiny_bert, fine_layers=2).eval()
    text, audio, video, al, vl, _ = make_batch(seed=11)
    lens = {"text": text.shape[-1], "audio": audio.shape[1], "video": video.shape[1]}
    with torch.no_grad():
        plain = model(text, audio, video, audio_lengths=al, vision_lengths=vl)
        out = model(text, audio, video, audio_lengths=al, vision_lengths=vl, return_attention=True)
    # return_attention takes the reference attention on the untrimmed batch (maps in padded shapes):
    # the same prediction up to rounding
    torch.testing.assert_close(plain["M"], out["M"], rtol=1e-5, atol=1e-6)
    assert "attention" not in plain
    attn, qmask = out["attention"], out["attention_query_mask"]
    pairs = [(a, b) for a in MODALITIES for b in MODALITIES if a != b]
    expected = {f"{a}_from_{b}/{i}" for a, b in pairs for i in range(2)} | {f"guided/{m}" for m in MODALITIES}
    assert set(attn) == expected == set(qmask)
    B, H = audio.shape[0], model.config.nheads
    real = {"text": text[:, 1].bool(), "audio": torch.arange(lens["audio"])[None] < al[:, None],
            "video": torch.arange(lens["video"])[None] < vl[:, None]}
    for a, b in pairs:
        for i in range(2):
            w, name = attn[f"{a}_from_{b}/{i}"], f"{a}_from_{b}/{i}"
            assert w.shape == (B, H, lens[a], lens[b]), name
            assert torch.equal(qmask[name], real[a]), name
            assert (w.masked_select(~real[b][:, None, None, :].expand_as(w)) == 0).all(), name  # padded keys
            torch.testing.assert_close(w.sum(-1), torch.ones(B, H, lens[a]))
    for m in MODALITIES:
        w = attn[f"guided/{m}"]
        assert w.shape == (B, H, 1, 2 * lens[m]) and qmask[f"guided/{m}"].shape == (B, 1)
        assert qmask[f"guided/{m}"].all()
        assert (w.masked_select(~torch.cat([real[m]] * 2, 1)[:, None, None, :].expand_as(w)) == 0).all()


def test_return_attention_without_fin_is_empty(tiny_bert):
    model = _model(tiny_bert, ablation=["fin"]).eval()
    with torch.no_grad():
        out = model(*make_batch(seed=12)[:3], return_attention=True)
    assert out["attention"] == {} and out["attention_query_mask"] == {}


def test_support_sizes_count_nonzero_keys_of_real_queries():
    attn = torch.zeros(2, 2, 3, 4)  # (B, heads, Lq, Lk)
    attn[0, 0, 0, :1] = 1.0          # support 1
    attn[0, 1, 0, :2] = 0.5          # support 2
    attn[0, :, 1, :] = 0.25          # support 4 (both heads)
    attn[0, :, 2, :3] = 1 / 3        # padded query: not counted
    attn[1, :, 0, 1:3] = 0.5         # support 2 (both heads); sample 1 has one real query
    qmask = torch.tensor([[True, True, False], [True, False, False]])
    got = support_sizes({"x": attn, "none": attn}, {"x": qmask, "none": torch.zeros_like(qmask)})
    # counts of the real rows: 1, 2, 4, 4, 2, 2
    assert got["x"] == {"mean": 15 / 6, "median": 2.0, "queries": 6}
    assert got["none"]["queries"] == 0 and got["none"]["mean"] != got["none"]["mean"]  # NaN


def test_support_sizes_of_a_model(tiny_bert):
    model = _model(tiny_bert).eval()
    text, audio, video, al, vl, _ = make_batch(seed=13)
    with torch.no_grad():
        out = model(text, audio, video, audio_lengths=al, vision_lengths=vl, return_attention=True)
    sizes = support_sizes(out["attention"], out["attention_query_mask"])
    assert set(sizes) == set(out["attention"])
    for name, s in sizes.items():
        lk = out["attention"][name].shape[-1]
        assert 1 <= s["median"] <= lk and 1 <= s["mean"] <= lk, (name, s)
        assert s["queries"] == int(out["attention_query_mask"][name].sum()) * model.config.nheads


# --- eq. 5 reduction: the batch-invariant default trains bit for bit like the paper's sum at batch 16 --

def test_default_alpha_is_the_sum_weight_times_16_squared():
    assert MMINConfig().sep_reduction == "mean" and MMINConfig().alpha == 1e-4 * 16 ** 2


def test_mean_reduction_is_bit_identical_to_sum_at_batch_16(tiny_bert):
    """sum / alpha = 1e-4 vs mean / alpha = default (1e-4 * 256): the same total loss and the same
    gradient of every parameter, bit for bit (x 256 and / 256 are exact in binary floating point)."""
    results = []
    for reduction, alpha in (("sum", 1e-4), ("mean", MMINConfig().alpha)):
        model = _model(tiny_bert, seed=0, sep_reduction=reduction, alpha=alpha).train()
        text, audio, video, al, vl, y = make_batch(seed=14, batch=16)
        torch.manual_seed(7)  # the same dropout masks
        out = model(text, audio, video, audio_lengths=al, vision_lengths=vl)
        total, terms = model.total_loss(out, y)
        total.backward()
        results.append((total.detach(), terms["L_sep"].detach(), [p.grad for p in model.parameters()]))
    (t_sum, sep_sum, g_sum), (t_mean, sep_mean, g_mean) = results
    assert torch.equal(sep_sum / 256, sep_mean) and sep_mean > 0
    assert torch.equal(t_sum, t_mean)
    assert all(torch.equal(a, b) for a, b in zip(g_sum, g_mean))


@pytest.mark.parametrize("batch", [8, 32], ids=["batch-8", "batch-32"])
def test_mean_reduction_divides_by_batch_squared(tiny_bert, batch):
    sep = {}
    for reduction in ("sum", "mean"):
        model = _model(tiny_bert, seed=0, sep_reduction=reduction).eval()
        with torch.no_grad():
            sep[reduction] = model(*make_batch(seed=15, batch=batch)[:3])["L_sep"]
    torch.testing.assert_close(sep["mean"], sep["sum"] / batch ** 2, rtol=1e-6, atol=0)


# --- CA design variants: ca_ffn and ca_positions (off = the paper's Fig. 2b, as before) -----------

CA_PARAMS = {f"{m}.{p}" for m in ("norm_q", "norm_kv", "q", "k", "v", "out") for p in ("weight", "bias")}


def _ca_by_hand(ca, x_q, x_kv, mask):
    """Fig. 2b written out: Y = X_q + W_o MHA_sparsemax(LN_q(X_q), LN_kv(X_kv)) (eval mode)."""
    from mmin_plugin.modeling.sparsemax import sparsemax_sort

    B, Lq, d = x_q.shape
    h, dh = ca.nheads, d // ca.nheads
    q_in = torch.nn.functional.layer_norm(x_q, (d,), ca.norm_q.weight, ca.norm_q.bias)
    kv_in = torch.nn.functional.layer_norm(x_kv, (d,), ca.norm_kv.weight, ca.norm_kv.bias)
    split = lambda t: t.view(B, -1, h, dh).transpose(1, 2)  # noqa: E731
    q, k, v = split(ca.q(q_in)), split(ca.k(kv_in)), split(ca.v(kv_in))
    scores = (q @ k.transpose(-1, -2)) / dh ** 0.5
    scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    ctx = (sparsemax_sort(scores, -1) @ v).transpose(1, 2).reshape(B, Lq, d)
    return x_q + ca.out(ctx)


def test_ca_module_off_is_fig_2b_with_its_parameter_names():
    torch.manual_seed(0)
    ca = CrossAttention(_ca_config(attn_dropout=0.1, dropout=0.1)).eval()
    assert {n for n, _ in ca.named_parameters()} == CA_PARAMS  # old checkpoints load
    q, kv = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 3:] = False
    with torch.no_grad():
        torch.testing.assert_close(ca(q, kv, mask), _ca_by_hand(ca, q, kv, mask), rtol=1e-5, atol=1e-6)


def test_ca_ffn_is_a_pre_norm_residual_feed_forward_sublayer():
    torch.manual_seed(0)
    ffn = CrossAttention(_ca_config(ca_ffn=True)).eval()
    assert {n for n, _ in ffn.named_parameters()} - CA_PARAMS == {
        "ffn_norm.weight", "ffn_norm.bias", "ffn_in.weight", "ffn_in.bias", "ffn_out.weight", "ffn_out.bias"}
    assert ffn.ffn_in.out_features == 4 * 16
    plain = CrossAttention(_ca_config()).eval()
    plain.load_state_dict({k: v for k, v in ffn.state_dict().items() if k in CA_PARAMS})
    q, kv, mask = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        y = plain(q, kv, mask)
        expected = y + ffn.ffn_out(torch.relu(ffn.ffn_in(torch.nn.functional.layer_norm(
            y, (16,), ffn.ffn_norm.weight, ffn.ffn_norm.bias))))
        torch.testing.assert_close(ffn(q, kv, mask), expected)
        assert not torch.allclose(ffn(q, kv, mask), y, atol=1e-3)  # the option changes the output


def test_sinusoidal_positions_are_mults():
    from mmin_plugin.modeling.model import sinusoidal_positions

    pe = sinusoidal_positions(5, 8)
    assert pe.shape == (5, 8)
    w = torch.tensor([10000.0 ** (-j / 3) for j in range(4)])  # h = 4 frequencies, 10000^(-j/(h-1))
    t = torch.arange(1, 6, dtype=torch.float32)[:, None] * w
    torch.testing.assert_close(pe, torch.cat([t.sin(), t.cos()], 1))
    assert sinusoidal_positions(3, 7)[:, -1].eq(0).all()


def test_ca_positions_add_scaled_positions_to_both_stack_inputs():
    from mmin_plugin.modeling.model import CALayerStack, sinusoidal_positions

    torch.manual_seed(0)
    pos = CALayerStack(_ca_config(ca_positions=True)).eval()
    plain = CALayerStack(_ca_config()).eval()
    plain.load_state_dict(pos.state_dict())  # no parameters of its own: the same names
    q, kv, mask = torch.randn(2, 5, 16), torch.randn(2, 7, 16), torch.ones(2, 7, dtype=torch.bool)
    with torch.no_grad():
        got = pos(q, kv, mask)
        want = plain(4.0 * q + sinusoidal_positions(5, 16), 4.0 * kv + sinusoidal_positions(7, 16), mask)
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, plain(q, kv, mask), atol=1e-3)


@pytest.mark.parametrize("option", ["ca_ffn", "ca_positions"])
def test_ca_option_changes_the_model_and_off_keeps_its_parameters(tiny_bert, option):
    base = _model(tiny_bert, seed=0).eval()
    variant = _model(tiny_bert, seed=0, **{option: True}).eval()
    names, variant_names = set(base.state_dict()), set(variant.state_dict())
    assert not any("ffn" in n for n in names)
    if option == "ca_positions":  # no parameters: the same checkpoint keys and, same seed, values
        assert variant_names == names
        assert all(torch.equal(base.state_dict()[k], variant.state_dict()[k]) for k in names)
    else:
        assert names < variant_names and all("ffn" in n for n in variant_names - names)
    text, audio, video, al, vl, y = make_batch(seed=16)
    with torch.no_grad():
        a = base(text, audio, video, audio_lengths=al, vision_lengths=vl)["M"]
        b = variant(text, audio, video, audio_lengths=al, vision_lengths=vl)["M"]
    assert torch.isfinite(b).all() and not torch.allclose(a, b, atol=1e-4)
    variant.train()
    loss, _ = variant.total_loss(variant(text, audio, video, audio_lengths=al, vision_lengths=vl), y)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in variant.named_parameters()
               if "ffn" in n)


@pytest.mark.e2e
def test_mmsa_run_with_the_mean_default_trains_exactly_as_the_sum(small_mosi, tmp_path):
    """A seeded MMSA run on MOSI-layout data at batch 16 (48 training samples: whole batches): the
    default (sep_reduction 'mean', alpha 1e-4 * 256) and the paper's sum with alpha 1e-4 give the
    same metrics, the same training history and the same checkpoint, bit for bit."""
    import json
    from pathlib import Path

    from mmin_plugin.integration.runner import mmsa_run

    config = {"featurePath": str(Path(small_mosi["feature_path"]).resolve()), "pretrained": small_mosi["bert_dir"],
              "d_model": 16, "nheads": 4, "fine_layers": 1, "fusion_ff_dim": 32, "disc_hidden": 8,
              "max_epochs": 2, "batch_size": 16}
    runs = {}
    for name, over in (("sum", {"sep_reduction": "sum", "alpha": 1e-4}), ("mean", {})):
        d = tmp_path / name
        res = mmsa_run("mmin", "mosi", config={**config, **over}, seeds=[1111], model_save_dir=d / "models",
                       res_save_dir=d / "results", log_dir=d / "logs", gpu_ids=[], num_workers=0, verbose_level=0)
        history = json.loads((d / "models" / "mmin-mosi.history.json").read_text())
        runs[name] = (res, history, torch.load(d / "models" / "mmin-mosi.pth", weights_only=True))
    (res_s, hist_s, ckpt_s), (res_m, hist_m, ckpt_m) = runs["sum"], runs["mean"]
    assert res_s == res_m
    assert [h["train_L_senti"] for h in hist_s] == [h["train_L_senti"] for h in hist_m]
    assert [h["train_L_sep"] / 256 for h in hist_s] == pytest.approx([h["train_L_sep"] for h in hist_m], rel=1e-12)
    assert ckpt_s.keys() == ckpt_m.keys() and all(torch.equal(ckpt_s[k], ckpt_m[k]) for k in ckpt_s)


# --- one source of truth: every module is built from MMINConfig, no default of its own -------------

#: parameters that may have a default: not configuration (forward-time switches, DANN's constant, tensor
#: placement); anything else with a default could silently disagree with MMINConfig
NOT_CONFIG_DEFAULTS = {("dann_weight", "gamma"), ("sinusoidal_positions", "device"),
                       ("sinusoidal_positions", "dtype")}


def _constructors():
    import inspect

    from mmin_plugin.integration import trainer
    from mmin_plugin.modeling import losses, model

    for module in (model, losses):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
                yield name, obj.__init__
            elif inspect.isfunction(obj):
                yield name, obj
    yield "SequenceLSTM", model.SequenceLSTM.__init__
    yield "clip_gradients", trainer.clip_gradients
    yield "MMINTrainer", trainer.MMINTrainer.__init__


def test_no_constructor_or_loss_function_has_a_default_of_its_own():
    import inspect

    defaults = {(name, p.name): p.default for name, fn in _constructors()
                for p in inspect.signature(fn).parameters.values()
                if p.default is not inspect.Parameter.empty and (name, p.name) not in NOT_CONFIG_DEFAULTS}
    # MMINTrainer(args, config=None): None = parse MMSA's args (not a value that could disagree)
    assert defaults == {("MMINTrainer", "config"): None}, defaults


FLIPPED = dict(d_model=24, nheads=3, fine_layers=3, fusion_layers=2, fusion_ff_dim=40, rnn_layers=2, disc_hidden=12,
               dropout=0.2, attn_dropout=0.3, ca_ffn=True, ca_positions=True, grl_lambda=0.5, sep_reduction="sum",
               adv_objective="reversal")


@pytest.mark.parametrize("over", [{}, FLIPPED], ids=["defaults", "every-model-key-changed"])
def test_every_module_is_built_as_the_config_says(over):
    """Build MMIN from a config (the defaults, then every model key changed) and read each module's
    settings back: a module with a default of its own would keep it here."""
    from mmin_plugin.modeling.model import CALayerStack, CoarseInteraction, FusionLayer, SequenceLSTM

    cfg = MMINConfig(use_bert=False, **over)
    net = MMIN(cfg)
    assert net.config is cfg
    d = cfg.d_model
    cas = [m for m in net.modules() if isinstance(m, CrossAttention)]
    assert len(cas) == 6 * cfg.fine_layers + 3  # 6 ordered pairs x N, and the coarse-guided step
    for ca in cas:
        assert (ca.nheads, ca.d_head, ca.has_ffn) == (cfg.nheads, d // cfg.nheads, cfg.ca_ffn)
        assert (ca.attn_dropout.p, ca.dropout.p) == (cfg.attn_dropout, cfg.dropout)
    for stack in (m for m in net.modules() if isinstance(m, CALayerStack)):
        assert (len(stack.layers), stack.positions) == (cfg.fine_layers, cfg.ca_positions)
    for rnn in (m for m in net.modules() if isinstance(m, SequenceLSTM)):
        assert (rnn.lstm.hidden_size, rnn.lstm.num_layers) == (d, cfg.rnn_layers)
    assert net.features.audio_rnn.lstm.input_size == cfg.feature_dims[1]
    assert net.features.video_rnn.lstm.input_size == cfg.feature_dims[2]
    (cin,) = [m for m in net.modules() if isinstance(m, CoarseInteraction)]
    assert (cin.grl_lambda, cin.sep_reduction, cin.adv_objective) == (cfg.grl_lambda, cfg.sep_reduction,
                                                                      cfg.adv_objective)
    disc = cin.discriminator
    assert (disc.fc1.in_features, disc.fc1.out_features, disc.fc2.out_features, disc.dropout.p) == (
        d, cfg.disc_hidden, len(MODALITIES), cfg.dropout)
    (fusion,) = [m for m in net.modules() if isinstance(m, FusionLayer)]
    assert len(fusion.transformer.layers) == cfg.fusion_layers
    for layer in fusion.transformer.layers:
        assert (layer.linear1.out_features, layer.self_attn.num_heads, layer.dropout.p) == (
            cfg.fusion_ff_dim, cfg.nheads, cfg.dropout)
    assert fusion.head[0].in_features == 3 * len(cfg.modalities) * d and fusion.head[2].p == cfg.dropout
    assert net.weights == {"alpha": cfg.alpha, "beta": cfg.beta, "gamma": cfg.gamma}
    every_dropout = {m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)}
    assert every_dropout <= {cfg.dropout, cfg.attn_dropout}, every_dropout


def test_sequence_lstm_recomputes_its_workspace_with_the_same_values_and_gradients():
    """Issue 27 (peak memory): with gradients on, the LSTM runs under activation checkpointing: it keeps
    only its input for the backward (oneDNN's workspace is rebuilt there), and outputs and gradients
    are those of the plain LSTM."""
    from mmin_plugin.modeling.model import SequenceLSTM

    torch.manual_seed(0)
    m = SequenceLSTM(5, MMINConfig(d_model=32))
    x = torch.randn(4, 60, 5, requires_grad=True)
    lengths = torch.tensor([60, 41, 7, 0])

    def run(plain):
        saved = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        m.zero_grad()
        x.grad = None
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            if plain:
                packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1), batch_first=True,
                                                                 enforce_sorted=False)
                out, (h, _) = m.lstm(packed)
                out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=60)
                end, seq = h[-1] * (lengths > 0)[:, None], out * (torch.arange(60)[None] < lengths[:, None])[..., None]
            else:
                end, seq, _ = m(x, lengths)
        (end.sum() + (seq * torch.linspace(-1, 1, 32)).sum()).backward()
        return end.detach(), seq.detach(), x.grad.clone(), [p.grad.clone() for p in m.parameters()], saved

    e1, s1, gx1, gp1, saved_ckpt = run(False)
    e2, s2, gx2, gp2, saved_plain = run(True)
    assert torch.equal(e1, e2) and torch.equal(s1, s2)
    for a, b in zip([gx1, *gp1], [gx2, *gp2]):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert sum(saved_ckpt.values()) < sum(saved_plain.values()) / 2


def test_recompute_changes_memory_not_values(tiny_bert):
    """config.recompute (default on) keeps less for the backward; off, autograd keeps the LSTM workspace
    and every CA layer's LN(x), q, k, v. Outputs are the same floats and gradients agree."""
    text, audio, video, al, vl, labels = make_batch()

    def run(recompute):
        torch.manual_seed(0)
        model = MMIN(make_args(tiny_bert, recompute=recompute)).eval()  # eval: no dropout draws to align
        saved = {}

        def pack(t):
            saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = model(text, audio, video, al, vl)
            loss, _ = model.total_loss(out, labels)
        loss.backward()
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        return out["M"].detach(), grads, sum(saved.values())

    m_on, g_on, bytes_on = run(True)
    m_off, g_off, bytes_off = run(False)
    assert torch.equal(m_on, m_off)
    assert g_on.keys() == g_off.keys()
    for name in g_on:
        torch.testing.assert_close(g_on[name], g_off[name], rtol=1e-5, atol=1e-6, msg=name)
    assert bytes_on < 0.8 * bytes_off
