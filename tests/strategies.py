"""All hypothesis strategies of the reference property tests, in one place.

Every float is bounded (no NaN, no +-inf unless a mask puts -inf on purpose, no subnormals)
and every shape is drawn, not fixed. Arrays are float64; tests cast them to the dtype under
test and give the oracle the *cast* values, so both sides see the same input.
"""
import os

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

MAX_ABS = 1e4  # largest |score| fed to sparsemax ("large magnitudes")
N_MODALITIES = 3  # text, video, audio = labels 0, 1, 2

#: Hypothesis example counts are scaled by $MMIN_HYPOTHESIS_SCALE (default 0.4, so the fast loop
#: stays fast; 1 gives the counts the tolerances were derived with; 10 for a soak run).
SCALE = float(os.environ.get("MMIN_HYPOTHESIS_SCALE", "0.4"))


def examples(n: int) -> int:
    """`n` hypothesis examples scaled by SCALE (at least 10)."""
    return max(10, round(n * SCALE))


def bounded_floats(max_abs=MAX_ABS, min_abs=0.0):
    """Finite floats in [-max_abs, max_abs]; with min_abs > 0, |x| >= min_abs."""
    any_sign = st.floats(-max_abs, max_abs, allow_nan=False, allow_infinity=False, allow_subnormal=False)
    if min_abs <= 0:
        return any_sign
    pos = st.floats(min_abs, max_abs, allow_nan=False, allow_infinity=False)
    return st.one_of(pos, pos.map(lambda x: -x))


def normal_floats(max_abs, min_abs=1e-6):
    """0 or |x| in [min_abs, max_abs]: products of a few such numbers, and their squares,
    stay normal in float32 (>= 1e-38), so float32 underflow does not masquerade as error."""
    return st.one_of(st.just(0.0), bounded_floats(max_abs, min_abs=min_abs))


def shapes(min_dims=1, max_dims=3, min_side=1, max_side=6):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=max_side)


def axes(ndim):
    """Any axis of an ndim array, negative spellings included."""
    return st.integers(-ndim, ndim - 1)


@st.composite
def scores(draw, shape=None, masked=True, max_abs=MAX_ABS):
    """Attention scores for sparsemax (shape: a tuple, a strategy of tuples, or drawn), in one
    of three regimes:

    - "spread":    independent floats of magnitude up to 1, 10, 100 or max_abs;
    - "clustered": base + floats in [-2, 2], base anywhere in [-max_abs, max_abs], so that
                   large magnitudes still give several entries inside the support;
    - "ties":      base + multiples of 1/4: many exact ties, also at the threshold.
    With `masked`, some entries (possibly whole rows) are set to -inf.
    """
    shape = shapes() if shape is None else shape
    if isinstance(shape, st.SearchStrategy):
        shape = draw(shape)
    regime = draw(st.sampled_from(["spread", "clustered", "ties"]))
    if regime == "spread":
        scale = draw(st.sampled_from([1.0, 10.0, 100.0, max_abs]))
        z = draw(hnp.arrays(np.float64, shape, elements=bounded_floats(scale)))
    else:
        base = draw(bounded_floats(max_abs - 2.0))
        if regime == "clustered":
            offsets = draw(hnp.arrays(np.float64, shape, elements=bounded_floats(2.0)))
        else:
            offsets = draw(hnp.arrays(np.int64, shape, elements=st.integers(-8, 8))) / 4.0
        z = base + offsets
    if masked and draw(st.booleans()):
        mask = draw(hnp.arrays(np.bool_, shape, elements=st.booleans()))
        z = np.where(mask, -np.inf, z)
    return z


@st.composite
def scores_and_axis(draw, masked=True, max_dims=3):
    z = draw(scores(shape=shapes(max_dims=max_dims), masked=masked))
    return z, draw(axes(z.ndim))


@st.composite
def small_rows(draw, max_len=5, max_abs=5.0):
    """1-D score rows small enough for a general-purpose QP solver."""
    n = draw(st.integers(1, max_len))
    return draw(hnp.arrays(np.float64, (n,), elements=bounded_floats(max_abs)))


@st.composite
def dominated_rows(draw, max_len=6):
    """(z, i): z[i] exceeds every other entry by at least 1 (sparsemax(z) = e_i)."""
    n = draw(st.integers(1, max_len))
    i = draw(st.integers(0, n - 1))
    top = draw(bounded_floats(MAX_ABS - 100.0))
    z = np.asarray([top - draw(st.floats(1.0, 100.0)) for _ in range(n)])
    z[i] = top
    return z, i


# --- constraint module (eq. 3, 4, 5) --------------------------------------------------------

@st.composite
def code_sets(draw, n_modalities=None, max_batch=6, max_dim=5):
    """(common, private): lists of (n, d) code matrices, one per modality, same batch n.

    Each code has its own feature width d (eq. 5 only needs equal n). n_modalities defaults
    to a draw from 1..3 (ablations drop modalities).
    """
    k = draw(st.integers(1, N_MODALITIES)) if n_modalities is None else n_modalities
    n = draw(st.integers(1, max_batch))
    scale = draw(st.sampled_from([1.0, 10.0, 100.0]))
    elems = normal_floats(scale)

    def code():
        return draw(hnp.arrays(np.float64, (n, draw(st.integers(1, max_dim))), elements=elems))

    common = [code() for _ in range(k)]
    private = [code() for _ in range(k)]
    return common, private


@st.composite
def orthogonal_code_sets(draw, max_dim=4):
    """(common, private) with every product in eq. 5 zero *by construction*.

    C_m^T P_m and P_m1^T P_m2 contract over the batch (rows), so what must be orthogonal are
    the column spaces in R^n. Take an orthogonal Q (n x n, QR of a drawn matrix), split its
    columns into 4 non-empty disjoint groups G_t, G_v, G_a, G_c; private code P_m mixes the
    columns G_m, common code C_m mixes G_c and the groups of the *other* modalities (so C_m
    is orthogonal to P_m but not to P_m' -- eq. 5 does not ask for that).
    """
    n = draw(st.integers(4, 8))
    q, _ = np.linalg.qr(draw(hnp.arrays(np.float64, (n, n), elements=bounded_floats(1.0))))
    order = draw(st.permutations(range(n)))
    cuts = sorted(draw(st.lists(st.integers(1, n - 1), min_size=3, max_size=3, unique=True)))
    groups = np.split(np.asarray(order), cuts)  # G_t, G_v, G_a, G_c
    elems = normal_floats(10.0)

    def mix(cols):
        a = draw(hnp.arrays(np.float64, (len(cols), draw(st.integers(1, max_dim))), elements=elems))
        return q[:, cols] @ a

    private = [mix(groups[m]) for m in range(N_MODALITIES)]
    common = [mix(np.concatenate([groups[3]] + [groups[o] for o in range(N_MODALITIES) if o != m]))
              for m in range(N_MODALITIES)]
    return common, private


@st.composite
def discriminator_cases(draw, max_batch=6, max_in=6, max_hidden=8):
    """(hs, weights): codes of each of the 3 modalities, (n, d) each, and D's weights
    W1 (H, d), b1 (H,), W2 (3, H), b2 (3,), keyed as in ModalityDiscriminator.state_dict()."""
    n = draw(st.integers(1, max_batch))
    d = draw(st.integers(1, max_in))
    hidden = draw(st.integers(1, max_hidden))
    w = normal_floats(3.0)
    hs = [draw(hnp.arrays(np.float64, (n, d), elements=normal_floats(10.0))) for _ in range(N_MODALITIES)]
    weights = {
        "fc1.weight": draw(hnp.arrays(np.float64, (hidden, d), elements=w)),
        "fc1.bias": draw(hnp.arrays(np.float64, (hidden,), elements=w)),
        "fc2.weight": draw(hnp.arrays(np.float64, (N_MODALITIES, hidden), elements=w)),
        "fc2.bias": draw(hnp.arrays(np.float64, (N_MODALITIES,), elements=w)),
    }
    return hs, weights


@st.composite
def modality_logits(draw, max_batch=6):
    """(logits_list, labels): one (n, 3) logit matrix per modality and its label in {0,1,2}.

    Labels are a drawn ordering of a drawn number of modalities (text=0, video=1, audio=2).
    """
    labels = draw(st.permutations(range(N_MODALITIES)))[: draw(st.integers(1, N_MODALITIES))]
    n = draw(st.integers(1, max_batch))
    scale = draw(st.sampled_from([1.0, 10.0, 1000.0]))
    logits = [draw(hnp.arrays(np.float64, (n, N_MODALITIES), elements=bounded_floats(scale)))
              for _ in labels]
    return logits, list(labels)


def lambdas():
    """Gradient-reversal strengths: 0 or lambda in [1e-3, 10] (grl_lambda is 1.0 in the
    registry); no tiny lambdas, whose products underflow in float32."""
    return st.one_of(st.just(0.0), st.floats(1e-3, 10.0))


@st.composite
def arrays_and_upstream(draw):
    """(x, g): an input and an upstream gradient of the same drawn shape."""
    shape = draw(shapes(max_dims=3))
    x = draw(hnp.arrays(np.float64, shape, elements=bounded_floats(100.0)))
    g = draw(hnp.arrays(np.float64, shape, elements=normal_floats(100.0)))
    return x, g
