"""Dynamic padding: cut a batch to its longest real sequence before MMIN computes anything.

A batch arrives padded to the file's lengths (MOSI: 50 tokens, 500 audio and 375 video steps)
whatever its clips' real lengths. Every step past the longest real one is padding in every
sample, and MMIN never lets padding reach a real value: the LSTMs run packed over the real
lengths, padded keys get exactly zero sparsemax weight, BERT masks padded tokens. Removing those
trailing steps therefore changes no real value in exact arithmetic (floating-point sums over a
shorter row may round differently in the last bit; a property test pins outputs and gradients
to 1e-5), while the LSTMs, projections and (Lq x Lk) score maps shrink to the real lengths: the
remedy of HF's ``DataCollatorWithPadding(padding="longest")``, applied inside the model so that
it holds for every data loader (MMSA's pads to the file's lengths).
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["trim_to_longest", "longest_real"]


def longest_real(x: torch.Tensor, lengths) -> int:
    """Steps of (B, L, ...) ``x`` up to the longest of ``lengths`` (clamped to [1, L]; None: L)."""
    L = x.shape[1]
    if lengths is None or x.shape[0] == 0:
        return L
    n = int(torch.as_tensor(lengths).reshape(-1).long().clamp(0, L).max())
    return max(n, 1)  # a zero-length batch keeps one (masked) step: the LSTM needs one


def _text_steps(text: torch.Tensor, use_bert: bool) -> int:
    """Tokens up to the last one that is real in any sample: BERT's attention mask (B, 3, L) row 1,
    or the non-zero feature rows of (B, L, d) features (position 0, [CLS], always counts)."""
    real = text[:, 1] != 0 if use_bert else text.abs().sum(-1) > 0  # (B, L)
    cols = real.any(0).nonzero()
    return max(int(cols.max()) + 1 if cols.numel() else 1, 1)


def trim_to_longest(text: Optional[torch.Tensor], audio: Optional[torch.Tensor], video: Optional[torch.Tensor],
                    audio_lengths=None, vision_lengths=None, use_bert: bool = True):
    """(text, audio, video) cut along time to the batch's longest real sequence of each modality.

    audio / video (B, L, d): to ``max(lengths)`` (None: unchanged); text: (B, 3, L) token ids /
    attention mask / segment ids (``use_bert``) or (B, L, d) features, to its last real token.
    Views (no copy); a tensor that is None or already tight is returned as is."""
    if audio is not None and audio.dim() == 3:
        audio = audio[:, :longest_real(audio, audio_lengths)]
    if video is not None and video.dim() == 3:
        video = video[:, :longest_real(video, vision_lengths)]
    if text is not None and text.dim() == 3 and text.shape[0] and text.shape[-1 if use_bert else 1]:
        n = _text_steps(text, use_bert)
        text = text[..., :n] if use_bert else text[:, :n]
    return text, audio, video
