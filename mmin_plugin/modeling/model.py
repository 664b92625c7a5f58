"""MMIN: Multi-grained Multimodal Interaction Network (Fang, Liu, Zhang, ICASSP 2024), one file with
modules named after the paper's section 2: FeatureExtractor (2.1), CoarseInteraction (2.2, CIN),
CrossAttention / CALayerStack / FineInteraction (2.3, FIN), FusionLayer (2.4), MMIN (the network).

Every module is built from the one :class:`MMINConfig` (nanoGPT's ``Block(config)``): no
constructor has a default of its own that could disagree with the config's (a test checks).

Modality order is always (text, video, audio) = (L, V, A); MMSA passes tensors as (text, audio, vision).
The design notes, and every choice made where the paper is silent, are in docs/design/model.md.
"""
from __future__ import annotations

import contextlib
import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.checkpoint import checkpoint

from ..constants import MODALITIES
from .activations import recompute_feed_forward
from .attention import (
    project_qkv,
    projected_sparsemax_attention,
    sparsemax_attention,
    sparsemax_reference_attention,
    support_sizes,
)
from .config import MMINConfig
from .dropout import use_kernel_dropout
from .losses import ModalityDiscriminator, grad_reverse, modality_confusion, modality_cross_entropy, separation_loss
from .padding import trim_to_longest
from .terms import LOSS_TERMS

__all__ = [
    "MMINConfig",
    "support_sizes",
    "sinusoidal_positions",
    "FeatureExtractor",
    "CoarseInteraction",
    "CrossAttention",
    "CALayerStack",
    "FineInteraction",
    "FusionLayer",
    "MMIN",
    "fusion_tokens",
]

def _full_lengths(x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)


def _as_lengths(lengths, x: torch.Tensor) -> torch.Tensor:
    """MMSA hands lengths as a tensor or a list; None means full length (e.g. MMSA_test)."""
    if lengths is None:
        return _full_lengths(x)
    lengths = torch.as_tensor(lengths, device=x.device).reshape(-1).long()
    return lengths.clamp(min=0, max=x.shape[1])


# --------------------------------------------------------------------------------------------
# 2.1 Feature extraction
# --------------------------------------------------------------------------------------------
class SequenceLSTM(nn.Module):
    """LSTM over the real lengths (packed): returns the end state and the zero-padded outputs.
    ``d_in``: the modality's feature width; width ``config.d_model``, ``config.rnn_layers`` layers.

    While gradients are recorded (and ``config.recompute``) the LSTM runs under activation
    checkpointing: oneDNN's LSTM keeps a workspace of several (L, B, 4 d) buffers for its backward
    (about 63 MB for MOSI's 500 audio steps at batch 16), which is dropped and rebuilt by running
    the LSTM forward again in the backward (the same floats; its cost is in docs/speed.md)."""

    def __init__(self, d_in: int, config: MMINConfig):
        super().__init__()
        self.lstm = nn.LSTM(d_in, config.d_model, num_layers=config.rnn_layers, batch_first=True)
        self.recompute = config.recompute

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        # x: (B, L, d_in), lengths: (B,) in [0, L]
        B, L, _ = x.shape
        # pack_padded_sequence rejects length 0; such rows are run on one step and zeroed below.
        packed = pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        if self.recompute and torch.is_grad_enabled() and any(p.requires_grad for p in self.lstm.parameters()):
            out, (h_n, _) = checkpoint(self.lstm, packed, use_reentrant=False)
        else:
            out, (h_n, _) = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=L)  # (B, L, d)
        valid = (lengths > 0).to(out.dtype)
        end_state = h_n[-1] * valid[:, None]  # (B, d)
        mask = torch.arange(L, device=x.device)[None, :] < lengths[:, None]  # (B, L) True = real step
        return end_state, out * mask[..., None].to(out.dtype), mask


class FeatureExtractor(nn.Module):
    """Section 2.1: BERT for text ([CLS] vector for CIN, token sequence for FIN); an LSTM over the
    real lengths for video and for audio (the modalities ``config.modalities`` leaves). Everything is
    projected / sized to width d_model."""

    def __init__(self, config: MMINConfig):
        super().__init__()
        self.modalities = config.modalities
        d = config.d_model
        self.use_bert = config.use_bert
        self.use_finetune = config.use_finetune
        if "text" in self.modalities:
            if self.use_bert:
                self.bert = _load_text_encoder(config)
                if config.recompute:  # BERT's feed-forward activations recomputed, not kept (activations.py)
                    recompute_feed_forward(self.bert)
                text_dim = int(self.bert.config.hidden_size)
            else:
                text_dim = config.feature_dims[0]
            self.text_proj = nn.Linear(text_dim, d)
        if "audio" in self.modalities:
            self.audio_rnn = SequenceLSTM(config.feature_dims[1], config)
        if "video" in self.modalities:
            self.video_rnn = SequenceLSTM(config.feature_dims[2], config)

    def encode_text(self, text: torch.Tensor):
        if self.use_bert:
            # text: (B, 3, L) = token ids, attention mask, segment ids (MMSA's text_bert)
            ids, mask, seg = text[:, 0].long(), text[:, 1].long(), text[:, 2].long()
            with torch.set_grad_enabled(self.use_finetune and torch.is_grad_enabled()):
                hidden = self.bert(input_ids=ids, attention_mask=mask, token_type_ids=seg).last_hidden_state
            key_mask = mask.bool()  # (B, L)
        else:
            # text: (B, L, d_text) pre-extracted features; zero rows are padding, position 0 is [CLS]
            hidden = text
            key_mask = text.abs().sum(-1) > 0
            key_mask[:, 0] = True
        seq = self.text_proj(hidden) * key_mask[..., None].to(hidden.dtype)  # (B, L, d)
        return seq[:, 0], seq, key_mask  # [CLS] vector (B, d), token sequence, mask

    def forward(self, text, audio, video, audio_lengths=None, video_lengths=None):
        """Returns {modality: (vector (B, d), sequence (B, L_m, d), key mask (B, L_m))}."""
        feats = {}
        if "text" in self.modalities:
            feats["text"] = self.encode_text(text)
        if "video" in self.modalities:
            feats["video"] = self.video_rnn(video, _as_lengths(video_lengths, video))
        if "audio" in self.modalities:
            feats["audio"] = self.audio_rnn(audio, _as_lengths(audio_lengths, audio))
        return feats


def _load_text_encoder(config: MMINConfig) -> nn.Module:
    """`pretrained` is a hub name or a local directory, as in MMSA's BERT models."""
    from transformers import AutoModel, BertModel, RobertaModel
    from transformers.utils import logging as hf_logging

    name = config.transformers
    if name in ("bert", "roberta"):
        # MMIN reads the [CLS] hidden state, not the pooler: leave the pooler out so that no
        # parameter sits in the model without ever receiving a gradient.
        cls = BertModel if name == "bert" else RobertaModel
        level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the checkpoint's pooler weights are unused on purpose
        try:
            return cls.from_pretrained(config.pretrained, add_pooling_layer=False)
        finally:
            hf_logging.set_verbosity(level)
    return AutoModel.from_pretrained(config.pretrained)


# --------------------------------------------------------------------------------------------
# 2.2 Coarse-grained Interaction Network
# --------------------------------------------------------------------------------------------
class CoarseInteraction(nn.Module):
    """CIN (section 2.2): private and common codes of each modality and the constraint module.

    h_m^P = tanh(W_m h_m + b_m) (eq. 1, one encoder per modality), h_m^C = tanh(W_c h_m + b_c) (eq. 2,
    shared), each (B, d). ``forward(h)`` with ``h = {m: (B, d)}`` returns ``(private, common, losses)``:
    the codes per modality and ``losses = {"L_sep": eq. 5 (``sep_reduction`` 'sum' as written, or 'mean':
    divided by B^2), "L_ac": eq. 3, "L_ap": eq. 4}``. In L_ac the
    common codes pass a gradient-reversal layer (strength ``grl_lambda``) before D, so D descends on
    L_ac while the common encoder ascends; L_ap is plain (D and the private encoders both descend).
    Reads ``d_model``, ``modalities``, ``disc_hidden``, ``dropout``, ``grl_lambda``,
    ``sep_reduction`` and ``adv_objective`` of ``config``.
    """

    def __init__(self, config: MMINConfig):
        super().__init__()
        d_model = config.d_model
        self.modalities = config.modalities
        self.private = nn.ModuleDict({m: nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh())
                                      for m in self.modalities})
        self.common = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh())  # shared by all modalities
        self.discriminator = ModalityDiscriminator(d_model, config.disc_hidden, len(MODALITIES), config.dropout)
        self.grl_lambda = config.grl_lambda
        self.sep_reduction = config.sep_reduction
        self.adv_objective = config.adv_objective
        #: schedule factor of the adversarial weight (the trainer sets it each step: DANN ramp); the
        #: encoders' adversarial gradient is scaled by grl_lambda * adv_scale
        self.adv_scale = 1.0

    def forward(self, h: Dict[str, torch.Tensor]):
        private = {m: self.private[m](h[m]) for m in self.modalities}  # each (B, d)
        common = {m: self.common(h[m]) for m in self.modalities}
        labels = [MODALITIES.index(m) for m in self.modalities]
        # Always computed (cheap) so that ablated terms are still logged; a zero weight in eq. 6
        # then removes their gradient.
        losses = {
            "L_sep": separation_loss([common[m] for m in self.modalities], [private[m] for m in self.modalities],
                                     reduction=self.sep_reduction),
            # eq. 3: D must not tell the common codes apart (before L_ap: D's dropout draws keep their order)
            **self._adversarial([common[m] for m in self.modalities], labels),
            # eq. 4: D must tell the private codes apart
            "L_ap": modality_cross_entropy([self.discriminator(private[m]) for m in self.modalities], labels),
        }
        return private, common, losses

    def _adversarial(self, codes, labels):
        """``L_ac``: D's cross-entropy on the common codes (eq. 3; the logged value, whatever the
        objective); ``L_adv``: the term eq. 6 weights by beta, whose gradients are

        * 'reversal': L_adv = L_ac through the gradient-reversal layer: D descends L_ac, the
          common encoder ascends it with weight lam = grl_lambda * adv_scale;
        * 'confusion': L_adv = L_ac(D on detached codes) + lam * L_conf(codes, D's weights
          detached): D descends L_ac and nothing else; the encoder descends the confusion
          cross-entropy (:func:`modality_confusion`) through a frozen copy of D.

        ``L_conf`` (detached) is returned for logging with either objective; with 'reversal' it is
        the confusion cross-entropy of the same logits as L_ac (no second pass through D).
        """
        lam = self.grl_lambda * self.adv_scale
        if self.adv_objective == "reversal":
            logits = [self.discriminator(grad_reverse(c, lam)) for c in codes]
            l_ac = modality_cross_entropy(logits, labels)
            return {"L_ac": l_ac, "L_adv": l_ac, "L_conf": modality_confusion([lg.detach() for lg in logits], labels)}
        l_ac = modality_cross_entropy([self.discriminator(c.detach()) for c in codes], labels)
        frozen = {k: v.detach() for k, v in self.discriminator.named_parameters()}
        conf = modality_confusion([torch.func.functional_call(self.discriminator, frozen, (c,)) for c in codes],
                                  labels)
        return {"L_ac": l_ac, "L_adv": l_ac + lam * conf, "L_conf": conf.detach()}


# --------------------------------------------------------------------------------------------
# 2.3 Fine-grained Interaction Network
# --------------------------------------------------------------------------------------------
def sinusoidal_positions(length: int, d_model: int, device=None, dtype=None) -> torch.Tensor:
    """MulT's (fairseq's) sinusoidal position table, (length, d_model), positions 1..length.

    PE[t, j] = sin(t w_j) for j < h and cos(t w_{j-h}) for h <= j < 2h, h = d_model // 2,
    w_j = 10000^(-j / (h - 1)); a zero column when d_model is odd."""
    half = d_model // 2
    w = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / max(half - 1, 1)))
    t = torch.arange(1, length + 1, dtype=torch.float32)[:, None] * w[None, :]  # (length, half)
    table = torch.cat([torch.sin(t), torch.cos(t)], dim=1)
    if d_model % 2:
        table = torch.cat([table, torch.zeros(length, 1)], dim=1)
    return table.to(device=device, dtype=dtype)


class CrossAttention(nn.Module):
    """The CA module (Fig. 2b), pre-norm residual:

        Y = X_q + Dropout(W_o MHA_sparsemax(LN_q(X_q), LN_kv(X_kv)))

    per head h: A_h = sparsemax(Q_h K_h^T / sqrt(d_head) over the real keys), output A_h V_h; padded
    keys (``kv_mask`` False) are -inf before sparsemax, so they get exactly zero weight; a row with no
    real key gets zero attention and the residual alone. With ``ffn`` (design variant ``ca_ffn``, as
    MulT's cross-modal layer) a position-wise feed-forward sub-layer with its own pre-norm and
    residual follows: Y' = Y + Dropout(W_2 Dropout(ReLU(W_1 LN_f(Y)))), width 4 d_model (MulT's).
    Without ``ffn`` the module (and its parameter names) is exactly the paper's Fig. 2b.

    ``forward(x_q (B, Lq, d), x_kv (B, Lk, d), kv_mask (B, Lk) or None, return_attention=False)``
    -> Y (B, Lq, d), and the sparsemax weights (B, heads, Lq, Lk) when ``return_attention``.
    Reads ``d_model``, ``nheads``, ``attn_dropout``, ``dropout``, ``ca_ffn`` and ``recompute`` of ``config``.
    """

    def __init__(self, config: MMINConfig):
        super().__init__()
        d_model, nheads, ffn = config.d_model, config.nheads, config.ca_ffn
        self.nheads, self.d_head = nheads, d_model // nheads
        self.norm_q = nn.LayerNorm(d_model)
        self.norm_kv = nn.LayerNorm(d_model)
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attn_dropout = nn.Dropout(config.attn_dropout)
        self.dropout = nn.Dropout(config.dropout)
        if ffn:
            self.ffn_norm = nn.LayerNorm(d_model)
            self.ffn_in = nn.Linear(d_model, 4 * d_model)
            self.ffn_out = nn.Linear(4 * d_model, d_model)
        self.has_ffn = ffn
        self.recompute = config.recompute

    def forward(self, x_q: torch.Tensor, x_kv: torch.Tensor, kv_mask: Optional[torch.Tensor] = None,
                return_attention: bool = False, q_mask: Optional[torch.Tensor] = None):
        # x_q: (B, Lq, d); x_kv: (B, Lk, d); kv_mask: (B, Lk), q_mask: (B, Lq) True = real step
        B, Lq, d = x_q.shape
        norms, projections = (self.norm_q, self.norm_kv), (self.q, self.k, self.v)
        # under autocast (config.precision) the attention runs in float32: the support is decided on
        # float32 scores, as the sparsemax itself is computed
        amp = torch.is_autocast_enabled(x_q.device.type)
        with torch.autocast(x_q.device.type, enabled=False) if amp else contextlib.nullcontext():
            a_q, a_kv = (x_q.float(), x_kv.float()) if amp else (x_q, x_kv)
            if return_attention or (self.training and self.attn_dropout.p > 0):  # the weights are needed
                q, k, v = project_qkv(a_q, a_kv, norms, projections, self.nheads)  # (B, h, L, dh)
                ctx, attn = sparsemax_reference_attention(q, k, v, kv_mask, self.attn_dropout, return_weights=True)
            elif self.recompute:  # fused on CPU: no (B, h, Lq, Lk) map, and no LN or q, k, v kept either
                ctx = projected_sparsemax_attention(a_q, a_kv, norms, projections, self.nheads, kv_mask, q_mask)
            else:  # fused on CPU: no (B, h, Lq, Lk) map; autograd keeps LN(x) and q, k, v
                ctx = sparsemax_attention(*project_qkv(a_q, a_kv, norms, projections, self.nheads), kv_mask, q_mask)
        ctx = ctx.transpose(1, 2).reshape(B, Lq, d)  # (B, Lq, d)
        y = x_q + self.dropout(self.out(ctx))
        if self.has_ffn:
            hidden = self.dropout(F.relu(self.ffn_in(self.ffn_norm(y))))  # (B, Lq, 4 d)
            y = y + self.dropout(self.ffn_out(hidden))
        return (y, attn) if return_attention else y


class CALayerStack(nn.Module):
    """N stacked CA modules for one ordered modality pair (query <- key/value): X_q <- CA_n(X_q, X_kv).

    With ``positions`` (design variant ``ca_positions``, as MulT's cross-modal transformer) both
    inputs are first scaled and given sinusoidal positions once, before layer 1:
    X <- sqrt(d_model) X + PE (:func:`sinusoidal_positions`), the key/value input of every layer being
    the positioned X_kv. ``forward(x_q, x_kv, kv_mask, return_attention=False)`` -> X_q (B, Lq, d), and
    the list of each layer's weights (B, heads, Lq, Lk) when ``return_attention``.
    ``config.fine_layers`` layers (N), ``config.ca_positions``; the layers read ``config`` too.
    """

    def __init__(self, config: MMINConfig):
        super().__init__()
        self.layers = nn.ModuleList(CrossAttention(config) for _ in range(config.fine_layers))
        self.positions = config.ca_positions
        self.embed_scale = math.sqrt(config.d_model)

    def forward(self, x_q, x_kv, kv_mask, return_attention=False, q_mask=None):
        if self.positions:
            d = x_q.shape[-1]
            x_q = self.embed_scale * x_q + sinusoidal_positions(x_q.shape[1], d, x_q.device, x_q.dtype)
            x_kv = self.embed_scale * x_kv + sinusoidal_positions(x_kv.shape[1], d, x_kv.device, x_kv.dtype)
        maps = []
        for layer in self.layers:
            if return_attention:
                x_q, attn = layer(x_q, x_kv, kv_mask, return_attention=True)
                maps.append(attn)
            else:
                x_q = layer(x_q, x_kv, kv_mask, q_mask=q_mask)
        return (x_q, maps) if return_attention else x_q


class FineInteraction(nn.Module):
    """FIN (section 2.3): stacked CA layers for every ordered modality pair, then the coarse-guided step.

    ``forward(seqs, masks, common, return_attention=False)``: ``seqs[m]`` (B, L_m, d) sequences,
    ``masks[m]`` (B, L_m) True on real steps, ``common[m]`` (B, d) common codes. For each modality a,
    ``cross["a_from_b"]`` (N CA layers, query a, key/value b) runs for every other modality b; the
    outputs are concatenated in time into a's fine sequence (B, (M-1) L_a, d), keyed by a's mask.

    Coarse-guided step: a's fine sequence is queried with the stacked common codes
    [h_L^C, h_V^C, h_A^C] (B, M, d) and ``f_a`` is "the corresponding vector", the output at a's own
    position. Each query position of a cross-attention is computed on its own (its layer norm,
    projections and attention row involve no other query), so ``f_a`` equals the output of querying
    with h_a^C alone (a test pins this and the read-out position); the other M-1 rows are computed
    and discarded on purpose: a (B, 1, d) query rounds the score product differently in the last bit,
    which changes seeded training runs (see docs/design/model.md), while the two extra rows cost
    about 2 / (N (M-1) L_a) of the step's attention work.

    Returns ``{m: f_m (B, d)}``; with ``return_attention`` also ``(attention, query_masks)``: dicts
    ``"<a>_from_<b>/<layer index>"`` (layer index from 0) -> (B, heads, L_a, L_b) and
    ``"guided/<m>"`` -> (B, heads, 1, (M-1) L_m) (the row of a's own query, the one used), and
    name -> (B, Lq) bool, True on real queries. The modalities are ``config.modalities``.
    """

    def __init__(self, config: MMINConfig):
        super().__init__()
        self.modalities = config.modalities
        self.pairs = [(a, b) for a in self.modalities for b in self.modalities if a != b]
        self.cross = nn.ModuleDict({f"{a}_from_{b}": CALayerStack(config) for a, b in self.pairs})
        self.guided = nn.ModuleDict({m: CrossAttention(config) for m in self.modalities})

    def forward(self, seqs: Dict[str, torch.Tensor], masks: Dict[str, torch.Tensor], common: Dict[str, torch.Tensor],
                return_attention: bool = False):
        fine, attention, query_masks = {}, {}, {}
        query = torch.stack([common[m] for m in self.modalities], dim=1)  # (B, M, d)
        for i, a in enumerate(self.modalities):
            others = [b for b in self.modalities if b != a]
            outs = []
            for b in others:
                name = f"{a}_from_{b}"
                if return_attention:
                    out, maps = self.cross[name](seqs[a], seqs[b], masks[b], return_attention=True)
                    for layer, attn in enumerate(maps):
                        attention[f"{name}/{layer}"], query_masks[f"{name}/{layer}"] = attn, masks[a]
                else:  # a's padded query rows are left undefined: only a's real steps are read below
                    out = self.cross[name](seqs[a], seqs[b], masks[b], q_mask=masks[a])
                outs.append(out)
            if others:
                seq_a = torch.cat(outs, dim=1)  # (B, (M-1) * L_a, d)
                mask_a = torch.cat([masks[a]] * len(others), dim=1)
            else:  # single-modality ablation: no pair to interact with
                seq_a, mask_a = seqs[a], masks[a]
            if return_attention:
                guided, attn = self.guided[a](query, seq_a, mask_a, return_attention=True)
                attention[f"guided/{a}"] = attn[:, :, i:i + 1]  # (B, heads, 1, Lk): a's own query row
                query_masks[f"guided/{a}"] = torch.ones(query.shape[0], 1, dtype=torch.bool, device=query.device)
            else:
                guided = self.guided[a](query, seq_a, mask_a)  # (B, M, d)
            fine[a] = guided[:, i]  # the vector at a's own position in the query stack
        return (fine, attention, query_masks) if return_attention else fine


# --------------------------------------------------------------------------------------------
# 2.4 Fusion layer
# --------------------------------------------------------------------------------------------
def fusion_tokens(config: MMINConfig) -> int:
    """Tokens the fusion layer stacks: per modality left, its private and common codes (CIN) and
    its fine vector (FIN), less what the 'cin' / 'fin' ablations drop."""
    return len(config.modalities) * (2 * ("cin" not in config.ablation) + ("fin" not in config.ablation))


class FusionLayer(nn.Module):
    """Stack the representations (:func:`fusion_tokens` of them), a transformer layer, concatenate,
    FC head -> sentiment score. Reads ``d_model``, ``nheads``, ``fusion_layers``, ``fusion_ff_dim``,
    ``dropout`` and the ablation of ``config``."""

    def __init__(self, config: MMINConfig):
        super().__init__()
        d_model, dropout, n_tokens = config.d_model, config.dropout, fusion_tokens(config)
        layer = nn.TransformerEncoderLayer(d_model, config.nheads, dim_feedforward=config.fusion_ff_dim,
                                           dropout=dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, config.fusion_layers, enable_nested_tensor=False)
        self.head = nn.Sequential(
            nn.Linear(n_tokens * d_model, d_model), nn.ReLU(), nn.Dropout(dropout), nn.Linear(d_model, 1)
        )

    def forward(self, tokens: torch.Tensor):
        # tokens: (B, n_tokens, d) -> (B, n_tokens * d) -> (B, 1)
        fused = self.transformer(tokens).flatten(1)
        return self.head(fused), fused


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------
class MMIN(nn.Module):
    """MMIN for MMSA: a sentiment score from text, audio and video (paper section 2).

    ``MMIN(args)``: ``args`` is MMSA's args (dict / EasyDict, as MMSA's AMIO passes it) or an
    :class:`MMINConfig`; the network reads only ``self.config = MMINConfig.from_args(args)``
    (validated: a bad key or value is an :class:`~mmin_plugin.errors.MMINConfigError`).

    ``forward(text, audio, video, audio_lengths=None, vision_lengths=None)``:

    * ``text``: (B, 3, L) token ids / attention mask / segment ids (``use_bert``), or (B, L, d_text)
      features whose all-zero rows are padding; ``audio``: (B, L_a, d_a); ``video``: (B, L_v, d_v);
      lengths: (B,) real steps of audio / video (None = full length, as in ``MMSA_test``).
    * returns ``{"M": (B, 1) prediction, "Feature_f": (B, n_tokens * d_model) fused representation,
      "L_sep", "L_ac", "L_ap": the scalar constraint losses of eq. 5, 3, 4, "L_adv": the adversarial term
      eq. 6 weights (see ``CoarseInteraction._adversarial``), and with ``adv_objective`` 'confusion'
      "L_conf" (the encoders' confusion cross-entropy, detached, for logging)}``.
    * ``return_attention=True`` adds ``"attention"``: {name: (B, heads, Lq, Lk) sparsemax weights} with
      names ``"<a>_from_<b>/<layer index>"`` (FIN pair stacks, layer index from 0) and ``"guided/<m>"``
      (the coarse-guided step, Lq = 1), and ``"attention_query_mask"``: {name: (B, Lq) bool, True on
      real query steps}; both empty under the 'fin' ablation. :func:`support_sizes` summarises them.
      These maps keep the padded shapes: ``return_attention`` turns the trimming below off.
    * ``trim_padding=True`` (default) first cuts the batch along time to its longest real sequence of
      each modality (:func:`~mmin_plugin.modeling.padding.trim_to_longest`): same outputs and
      gradients (to rounding), compute and memory that follow the real lengths.

    With ``config.dropout_kernel`` every ``nn.Dropout`` of the network, BERT's included, is
    :class:`~mmin_plugin.modeling.dropout.Dropout` (the same dropout, its mask recomputed in the backward).

    :meth:`total_loss` assembles eq. 6, L = L_senti + alpha L_sep + beta L_ac + gamma L_ap, with
    ``self.weights`` = ``config.loss_weights`` (zeroed by the 'sep' / 'ac' / 'ap' ablations).
    """

    def __init__(self, args):
        super().__init__()
        self.config = config = MMINConfig.from_args(args)
        self.ablation = list(config.ablation)
        self.modalities = config.modalities
        self.use_cin = "cin" not in self.ablation
        self.use_fin = "fin" not in self.ablation
        self.weights = config.loss_weights
        self.features = FeatureExtractor(config)
        self.cin = CoarseInteraction(config)
        self.fin = FineInteraction(config) if self.use_fin else None
        self.fusion = FusionLayer(config)
        if config.dropout_kernel:  # every nn.Dropout, BERT's too: the same dropout, no mask kept (dropout.py)
            use_kernel_dropout(self)

    def forward(self, text, audio, video, audio_lengths=None, vision_lengths=None, return_attention=False,
                trim_padding=True, **_):
        if trim_padding and not return_attention:  # compute follows the real lengths (exact: padding.py)
            text, audio, video = trim_to_longest(text, audio, video, audio_lengths, vision_lengths,
                                                 self.config.use_bert)
        feats = self.features(text, audio, video, audio_lengths, vision_lengths)
        vec = {m: feats[m][0] for m in self.modalities}
        seqs = {m: feats[m][1] for m in self.modalities}
        masks = {m: feats[m][2] for m in self.modalities}

        private, common, losses = self.cin(vec)
        tokens = []
        if self.use_cin:
            tokens += [private[m] for m in self.modalities] + [common[m] for m in self.modalities]
        attention, query_masks = {}, {}
        if self.use_fin:
            if return_attention:
                fine, attention, query_masks = self.fin(seqs, masks, common, return_attention=True)
            else:
                fine = self.fin(seqs, masks, common)
            tokens += [fine[m] for m in self.modalities]
        pred, fused = self.fusion(torch.stack(tokens, dim=1))  # (B, n_tokens, d) -> (B, 1)
        out = {"M": pred, "Feature_f": fused}
        out.update(losses)
        if return_attention:
            out["attention"], out["attention_query_mask"] = attention, query_masks
        return out

    def total_loss(self, outputs: Dict[str, torch.Tensor], labels: torch.Tensor):
        """Eq. 6 from the loss table (modeling/terms.py): L = L_senti + alpha L_sep + beta L_adv +
        gamma L_ap (L_senti = MSE); L_adv is L_ac (with reversal, eq. 3) or D's L_ac plus the
        encoders' confusion term (``adv_objective``). Returns ``(total, terms)``, ``terms`` holding
        every term of the table (L_ac: D's cross-entropy, the logged value; L_conf: logged only)."""
        values = {**outputs, "L_senti": F.mse_loss(outputs["M"], labels)}
        terms = {t.name: values[t.name] for t in LOSS_TERMS}
        total = None
        for t in LOSS_TERMS:
            if t.in_total:
                part = values.get(t.total_key, values[t.name])
                part = part if t.weight is None else self.weights[t.weight] * part
                total = part if total is None else total + part
        return total, terms
