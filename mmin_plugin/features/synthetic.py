"""Synthetic MMSA-Standard-layout feature files (offline; no torch).

``make_demo_features(path, dataset='mosi', ...) -> Path`` writes a pickle laid out like
MMSA-Standard ``unaligned_50.pkl`` (MOSI/MOSEI) or ``unaligned_39.pkl`` (SIMS), with a learnable
label signal in every modality; the padded lengths, widths, label range and language come from the
dataset's spec (:mod:`mmin_plugin.datasets`), the layout is in the function's docstring.
Token ids come from the demo vocabulary (:func:`demo_vocab`), which the tiny BERT of
:mod:`mmin_plugin.experiments.demo` shares.
"""
from __future__ import annotations

import pickle
import string
import zlib
from pathlib import Path

import numpy as np

from .. import datasets
from ..atomic import atomic_write
from ..errors import MMINConfigError

__all__ = ["DEMO_SIZES", "demo_vocab", "make_demo_features"]

#: Samples per split of the demo file (``demo`` and ``demo-data`` alike).
DEMO_SIZES = {"n_train": 128, "n_valid": 32, "n_test": 32}

_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

_EN_POS = ("good great excellent wonderful amazing love loved lovely happy best fantastic "
           "brilliant enjoyed enjoy awesome beautiful perfect nice fun funny favorite superb "
           "delightful pleasant charming impressive glad recommend outstanding terrific "
           "incredible masterpiece smart sweet touching exciting fine cool").split()
_EN_NEG = ("bad terrible awful horrible hate hated worst boring poor sad stupid disappointing "
           "disappointed annoying ugly waste dull mess pathetic weak lame painful dreadful "
           "ridiculous angry unpleasant fail failed worse nasty gross mediocre confusing "
           "tedious sucks cheap lousy").split()
_EN_NEUTRAL = (
    "the a an and or but so then this that these those it its is was are were be been being "
    "i you he she we they me him her us them my your his our their what which who when where "
    "why how movie film story plot actor actors actress director scene scenes character "
    "characters ending beginning part end time times thing things way people man woman guy "
    "kid kids family friend friends house car city town day night week year today yesterday "
    "about after before during over under with without into onto from to of in on at by for "
    "as like just also still even only very really quite pretty kind sort lot bit much many "
    "some any all both each every other another same different first second last next new "
    "old big small long short high low early late whole main real true sure well maybe "
    "think thought know knew see saw watch watched watching say said tell told go went going "
    "come came get got make made take took look looked seem seemed feel felt want wanted "
    "give gave find found let put keep kept begin began show showed try tried call called "
    "talk talked ask asked work worked play played move moved turn turned start started "
    "music sound camera light color voice face eyes hand hands head room door window table "
    "book page word words question answer point idea reason fact case example number group "
    "there here now um uh yeah okay basically actually honestly obviously probably usually "
    "one two three four five six seven ten hundred half minute minutes hour hours moment "
    "around across along behind between through toward against among upon within").split()
_EN_PUNCT = [".", ",", "!", "?", "'", "-"]

_CN_POS = list("好棒赞爱美乐喜笑甜优妙佳福强酷帅暖欢赏善")
_CN_NEG = list("坏差烂恨丑哭苦悲糟怒烦累痛恶弱惨臭愁怕厌")
_CN_NEUTRAL = list(
    "的了是我你他她它这那在有个们说看来去就也都和要会对能着没过吗呢吧啊哦嗯"
    "人天年月日时候家里外上下中前后左右东西南北大小多少高低长短新老开关出入"
    "电影故事演员导演角色情节结局开始部分时间地方事情东西朋友家庭城市房子车"
    "今明昨早晚一二三四五六七八九十百千万两几些每各其他别同样第次回把被给让"
    "想知道觉得认为看见听到做作用拿放走跑坐站吃喝睡写读学教问答找等买卖用"
    "音乐声音镜头画面颜色脸眼手头门窗桌书页字词题点意思原因例子数组真假还再"
    "很非常太比较挺稍点儿已经正在将要可以应该需要可能一定其实确实当然然后所以"
)
_CN_PUNCT = ["，", "。", "！", "？"]


def _dedup(seq):
    seen, out = set(), []
    for w in seq:
        if w not in seen:
            seen.add(w)
            out.append(w)
    return out


def _word_lists(language):
    if language == "en":
        pos, neg = _dedup(_EN_POS), _dedup(_EN_NEG)
        neutral = [w for w in _dedup(_EN_NEUTRAL) if w not in set(pos) | set(neg)]
        return pos, neg, neutral, list(_EN_PUNCT)
    if language == "cn":
        pos, neg = _dedup(_CN_POS), _dedup(_CN_NEG)
        neutral = [w for w in _dedup(_CN_NEUTRAL) if w not in set(pos) | set(neg)]
        return pos, neg, neutral, list(_CN_PUNCT)
    raise MMINConfigError(f"language: expected 'en' or 'cn'; found {language!r}")


def demo_vocab(language="en"):
    """The demo vocabulary (``vocab.txt`` lines): [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4, ..."""
    pos, neg, neutral, punct = _word_lists(language)
    extra = list(string.digits)
    if language == "cn":
        # bert-base-chinese also knows latin letters; a few make mixed text tokenizable.
        extra += list(string.ascii_lowercase)
    return _dedup(_SPECIALS + punct + pos + neg + neutral + extra)


def _demo_tokenizer(vocab):
    from transformers import BertTokenizer  # local import: transformers is slow to import

    # transformers 5.x: the constructor takes `vocab` (a path or a dict); `vocab_file` is ignored.
    return BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)


def _round_to(x, step):
    return np.round(np.asarray(x) / step) * step


def _labels(rng, n, spec):
    """Regression labels as in the real data, within the spec's label range: MOSI-style averages of
    3 annotators' integer scores (multiples of 1/3, spread 1.5 on [-3, 3]); SIMS-style multiples of
    0.2 (spread 0.55 on [-1, 1]), with unimodal labels near them when the spec has them."""
    lo, hi = spec.label_range
    sims = spec.metric_family == "sims"
    scale = spec.label_max / (1.0 if sims else 3.0)
    step, mean, sd = (0.2, 0.0, 0.55) if sims else (1.0 / 3.0, 0.2, 1.5)
    y = np.clip(_round_to(np.clip(rng.normal(mean * scale, sd * scale, n), lo, hi), step * scale), lo, hi)
    uni = None
    if spec.unimodal_labels:
        uni = {}
        for m in "TAV":
            u = _round_to(np.clip(y + rng.normal(0.0, 0.2 * scale, n), lo, hi), step * scale)
            uni[m] = np.clip(u, lo, hi).astype(np.float32)
    return y.astype(np.float32), uni


def _class3(y):
    """0 = Negative, 1 = Neutral, 2 = Positive (float32, as MMSA-era files store them)."""
    y = np.asarray(y, dtype=np.float64)
    return np.where(np.abs(y) < 1e-6, 1.0, np.where(y < 0, 0.0, 2.0)).astype(np.float32)


def _annotations(y):
    names = np.array(["Negative", "Neutral", "Positive"])
    return [str(s) for s in names[_class3(y).astype(int)]]


def _sentences(rng, strength, language, max_words):
    """One utterance per sample; the number and polarity of sentiment words follow `strength`
    (in [-1, 1]); an occasional one-word utterance; an occasional distractor word."""
    pos, neg, neutral, punct = _word_lists(language)
    out = []
    for s in strength:
        k = 0 if abs(s) < 0.05 else int(np.ceil(abs(s) * 4))
        polar = pos if s > 0 else neg
        if rng.random() < 0.04 and max_words >= 1:  # one-word utterance
            words = [str(rng.choice(polar))] if k > 0 else [str(rng.choice(neutral))]
        else:
            n_neutral = int(rng.integers(2, 16))
            words = [str(w) for w in rng.choice(neutral, n_neutral)]
            words += [str(w) for w in rng.choice(polar, k)] if k > 0 else []
            if rng.random() < 0.1:  # distractor of the opposite (or any) polarity
                words.append(str(rng.choice(neg if s > 0 else pos)))
            rng.shuffle(words)
            words = words[:max_words]
        if language == "cn":
            text = "".join(words) + ("" if len(words) == 1 else str(rng.choice(punct)))
        else:
            text = " ".join(words)
            text = text[:1].upper() + text[1:]
            if len(words) > 1:
                text += " " + str(rng.choice(punct[:4]))
        out.append(text)
    return out


def _ids(rng, n, spec):
    if spec.language == "cn":  # SIMS-style ids
        vids = rng.integers(1, 9999, n)
        clips = rng.integers(1, 9999, n)
        return [f"video_{v:04d}$_${c:04d}" for v, c in zip(vids, clips)]
    alphabet = np.array(list(string.ascii_letters + string.digits + "_-"))
    out = []
    for _ in range(n):
        vid = "".join(rng.choice(alphabet, 11))
        out.append(f"{vid}$_${int(rng.integers(1, 40))}")
    return out


def _lengths(rng, n, max_len, force_one=True):
    """Valid lengths in [1, max_len]: mostly 30%..100% of max_len, a few very short ones,
    and (when n > 1) one guaranteed length-1 sequence."""
    lo = max(1, int(round(0.3 * max_len)))
    lens = rng.integers(lo, max_len + 1, n)
    short = rng.random(n) < 0.05
    lens[short] = rng.integers(1, max(2, lo), int(short.sum()))
    if force_one and n > 1:
        lens[int(rng.integers(0, n))] = 1
    return np.clip(lens, 1, max_len).astype(np.int64)


def _token_vector(token, dim, seed):
    """A fixed, token-specific pseudo-BERT vector (seeded by the token text), norm ~ sqrt(dim)/2."""
    r = np.random.default_rng([zlib.crc32(token.encode("utf-8")), seed, 7919])
    return r.normal(0.0, 0.5, dim)


def _text_features(rng, text_bert, tokenizer, pos_set, neg_set, dim, seed, signal, noise):
    """(N, L, dim) float32 BERT-like features at the valid (mask 1) steps, zeros at padding.

    Each step = its token's fixed vector + (token polarity + utterance mean polarity, as a
    contextual encoder would mix in) x a fixed sentiment direction + a little noise.
    """
    ids = text_bert[:, 0, :].astype(np.int64)
    mask = text_bert[:, 1, :] > 0
    uniq = np.unique(ids)
    toks = [str(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in uniq])]
    scale = 0.5 * np.sqrt(dim)
    direction = np.random.default_rng([seed, 104729]).normal(size=dim)
    direction *= scale / np.linalg.norm(direction)
    table = np.stack([_token_vector(t, dim, seed) for t in toks]).astype(np.float32)
    polarity = np.array([1.0 if t in pos_set else (-1.0 if t in neg_set else 0.0) for t in toks])
    idx = np.searchsorted(uniq, ids)
    tok_pol = polarity[idx] * mask                                        # (N, L)
    ctx = tok_pol.sum(1) / np.maximum(mask.sum(1), 1) * 4.0               # (N,)
    feats = table[idx]
    feats += (signal * (tok_pol + ctx[:, None]))[..., None].astype(np.float32) \
        * direction.astype(np.float32)
    feats += (noise * 0.1 * scale / np.sqrt(dim)
              * rng.standard_normal(feats.shape, dtype=np.float32))
    feats[~mask] = 0.0
    return feats.astype(np.float32, copy=False)


def _sequence_features(rng, n, max_len, dim, lengths, strength, signal, noise, sig_dims, sig_w,
                       pattern):
    """(N, max_len, dim) float32: Gaussian noise plus a label-dependent offset on a few
    dimensions, modulated by a slow temporal pattern, at the valid steps; zeros after."""
    x = np.zeros((n, max_len, dim), dtype=np.float32)
    for i in range(n):
        L = int(lengths[i])
        if L <= 0:
            continue
        seg = noise * rng.standard_normal((L, dim))
        seg[:, sig_dims] += signal * strength[i] * sig_w[None, :] * pattern[:L, None]
        x[i, :L] = seg.astype(np.float32)
    return x


def _corrupt(rng, split_data, keys=("audio", "vision")):
    """Insert NaN, +inf, -inf and zero-length sequences (the bad-input demo), in place.

    Per modality: 1 (n < 8) or 2 zero-length sequences (rows zeroed; none when n < 2), one
    NaN, one +inf and one -inf at valid steps of other samples, a few more random ones, and
    (audio) -inf in the padding of one sample, as real MOSI has.
    """
    bad_values = (np.nan, np.inf, -np.inf)
    for key in keys:
        arr = split_data[key]
        lens = list(split_data[key + "_lengths"])
        n, L, d = arr.shape
        order = [int(i) for i in rng.permutation(n)]
        n_zero = 0 if n < 2 else (1 if n < 8 else 2)
        zero, rest = order[:n_zero], order[n_zero:]
        for i in zero:
            lens[i] = 0
            arr[i] = 0.0

        def put(i, val, arr=arr, lens=lens, d=d):
            t = int(rng.integers(0, max(1, lens[i])))
            arr[i, t, int(rng.integers(0, d))] = val

        for j, val in enumerate(bad_values):
            put(rest[j % len(rest)], val)
        for _ in range(max(1, n // 8)):
            put(rest[int(rng.integers(0, len(rest)))], bad_values[int(rng.integers(0, 3))])
        if key == "audio":
            i = rest[-1]
            if lens[i] < L:
                arr[i, lens[i]:, 0] = -np.inf
        split_data[key + "_lengths"] = lens
    return split_data


def _left_pad(split_data, keys=("audio", "vision")):
    """Move every sequence's frames ``[0, length)`` to the END of its row (zeros before), in place,
    as in the MulT authors' left-padded arrays, and set its length as MMSA's ``getLengths`` finds it
    on such an array: the index of the first all-zero frame (0 for a padded row), 0 forced to 1,
    so 1 for every sequence shorter than the padded length and the full length otherwise."""
    for key in keys:
        arr = split_data[key]
        n, L, _ = arr.shape
        lens = np.asarray(split_data[key + "_lengths"], dtype=np.int64)
        for i in range(n):
            k = int(lens[i])
            if 0 < k < L:
                arr[i, L - k:] = arr[i, :k].copy()
                arr[i, :L - k] = 0.0
        split_data[key + "_lengths"] = [L if int(k) == L else 1 for k in lens]
    return split_data


def make_demo_features(path, dataset="mosi", n_train=DEMO_SIZES["n_train"], n_valid=DEMO_SIZES["n_valid"],
                       n_test=DEMO_SIZES["n_test"], seed=0,
                       bert_dir=None, seq_lens=None, corrupt=False, signal=1.0, noise=1.0,
                       text_dim=768, left_pad=False) -> Path:
    """Write a demo feature pickle laid out like MMSA-Standard ``unaligned_*.pkl``; return its path.

    Layout: ``{'train': S, 'valid': S, 'test': S}``; each ``S`` (``N`` samples) holds

    ======================  ==========================  ========================================
    key                     type / dtype                shape, values
    ======================  ==========================  ========================================
    id                      ndarray of str (``<U``)     (N,), ``'videoid$_$clipid'``
    raw_text                ndarray of str (``<U``)     (N,)
    text                    ndarray float32             (N, L, 768), zeros after the tokens
    text_bert               ndarray float64             (N, 3, L): ids, 0/1 mask, segment ids 0
    audio                   ndarray float32             (N, La, da), zeros after the length
    vision                  ndarray float32             (N, Lv, dv), zeros after the length
    audio_lengths           list of int                 N values in [1, La] ([0, La] if corrupt)
    vision_lengths          list of int                 N values in [1, Lv] ([0, Lv] if corrupt)
    regression_labels       ndarray float32             (N,), [-3, 3] (SIMS: [-1, 1])
    classification_labels   ndarray float32             (N,), 0 Negative / 1 Neutral / 2 Positive
    annotations             list of str                 'Negative' / 'Neutral' / 'Positive'
    SIMS only:
    regression_labels_{T,A,V}      ndarray float32      (N,), [-1, 1]
    classification_labels_{T,A,V}  ndarray float32      (N,), 0 / 1 / 2
    ======================  ==========================  ========================================

    ``dataset``: a name known to :mod:`mmin_plugin.datasets` or a
    :class:`~mmin_plugin.datasets.Dataset`; (L, La, Lv), (da, dv), the label range, the language and
    the unimodal labels are its spec's (MOSI (50, 500, 375) / (5, 20); MOSEI (50, 500, 375) /
    (74, 35); SIMS (39, 400, 55) / (33, 709)).  ``seq_lens=(L, La, Lv)`` shrinks the
    sequences (fast tests).  Token ids come from the tokenizer in ``bert_dir`` (default: the
    demo vocabulary that :func:`make_tiny_bert` writes, so ids match a tiny BERT of the same
    language).  Every modality carries the label: sentiment words in ``raw_text``/ids/``text``,
    a label-proportional offset on a few audio/vision dimensions at valid steps, plus noise
    (``signal``/``noise`` scale them).  SIMS modalities follow their unimodal labels.

    ``corrupt=True`` (the bad-input demo) inserts NaN, +inf and -inf into audio/vision (also
    -inf in audio padding, as real MOSI has) and sets 1-2 lengths per split and modality to 0
    (rows zeroed); with at least 5 samples per split every kind appears in every split.

    ``left_pad=True`` lays audio and vision out like the MulT authors' left-padded arrays: the
    same frames as the right-padded file of the same seed, moved to the end of each row (zeros
    before), with the lengths MMSA's ``getLengths`` gives such an array (first all-zero frame,
    0 forced to 1: 1 for every sequence shorter than the padded length, the full length
    otherwise).  MMIN's start-up length check warns about it; ``lengths_from: "nonzero"`` recovers
    the right-padded file's arrays and lengths exactly.
    The file is written atomically (temporary file + rename).
    """
    spec = dataset if isinstance(dataset, datasets.Dataset) else datasets.get(dataset)
    dataset = spec.name
    L, La, Lv = spec.seq_lens if seq_lens is None else tuple(seq_lens)
    for name, v, lo in (("text L", L, 4), ("audio La", La, 1), ("vision Lv", Lv, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < lo:
            raise MMINConfigError(f"seq_lens ({name}): expected an int >= {lo}; found {v!r}")
    for name, v in (("n_train", n_train), ("n_valid", n_valid), ("n_test", n_test)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise MMINConfigError(f"{name}: expected an int >= 1; found {v!r}")
    _, da, dv = spec.feature_dims
    language = spec.language
    label_max = spec.label_max

    pos, neg, _, _ = _word_lists(language)
    if bert_dir is not None:
        from transformers import BertTokenizer

        tokenizer = BertTokenizer.from_pretrained(str(bert_dir))
    else:
        tokenizer = _demo_tokenizer(demo_vocab(language))
    pos_set, neg_set = set(pos), set(neg)

    root = np.random.default_rng([seed, zlib.crc32(dataset.encode())])
    # Fixed (per file) signal dimensions, weights and temporal patterns for audio/vision.
    k_a, k_v = max(1, min(da, 4)), max(1, min(dv, 8))
    sig = {
        "audio": (root.choice(da, k_a, replace=False), root.choice([-1.0, 1.0], k_a),
                  1.0 + 0.5 * np.sin(np.linspace(0, 6 * np.pi, La))),
        "vision": (root.choice(dv, k_v, replace=False), root.choice([-1.0, 1.0], k_v),
                   1.0 + 0.5 * np.cos(np.linspace(0, 4 * np.pi, Lv))),
    }

    data = {}
    for split, n in (("train", n_train), ("valid", n_valid), ("test", n_test)):
        rng = np.random.default_rng([seed, zlib.crc32(dataset.encode()),
                                     zlib.crc32(split.encode())])
        y, uni = _labels(rng, n, spec)
        strength = {m: (uni[m] if uni is not None else y) / label_max for m in "TAV"}
        # per-modality view of the label (MOSI/MOSEI): the same sentiment, a little noise
        if uni is None:
            for m in "AV":
                strength[m] = np.clip(strength[m] + rng.normal(0, 0.1, n), -1, 1)
        raw_text = _sentences(rng, strength["T"], language, max_words=max(1, L - 2))
        enc = tokenizer(raw_text, padding="max_length", truncation=True, max_length=L)
        text_bert = np.stack([np.asarray(enc["input_ids"], dtype=np.float64),
                              np.asarray(enc["attention_mask"], dtype=np.float64),
                              np.zeros((n, L), dtype=np.float64)], axis=1)
        text = _text_features(rng, text_bert, tokenizer, pos_set, neg_set, text_dim, seed,
                              signal, noise)
        a_len = _lengths(rng, n, La)
        v_len = _lengths(rng, n, Lv)
        audio = _sequence_features(rng, n, La, da, a_len, strength["A"], signal, noise,
                                   *sig["audio"])
        vision = _sequence_features(rng, n, Lv, dv, v_len, strength["V"], signal, noise,
                                    *sig["vision"])
        s = {
            "id": np.array(_ids(rng, n, spec)),
            "raw_text": np.array(raw_text),
            "text": text,
            "text_bert": text_bert,
            "audio": audio,
            "vision": vision,
            "audio_lengths": [int(v) for v in a_len],
            "vision_lengths": [int(v) for v in v_len],
            "regression_labels": y,
            "classification_labels": _class3(y),
            "annotations": _annotations(y),
        }
        if uni is not None:
            for m in "TAV":
                s["regression_labels_" + m] = uni[m]
                s["classification_labels_" + m] = _class3(uni[m])
        if corrupt:
            _corrupt(rng, s)
        if left_pad:
            _left_pad(s)
        data[split] = s

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: pickle.dump(data, f, protocol=4))
    return path


