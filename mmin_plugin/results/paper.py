"""The paper's published numbers (Fang, Liu, Zhang, ICASSP 2024, Tables 1 and 2), as data.

These are PUBLISHED numbers copied from the paper (/work/shared/paper/mmin-icassp2024.txt), not
results measured by this project. They are shown next to measured results only as a labelled
reference block.

Conventions, as in the paper:

* ``MAE`` and ``Corr`` are plain numbers; ``Acc-2`` and ``F1`` are percentages.
* ``Acc-2`` / ``F1`` come as pairs ``(left, right)``: left is computed "negative/non-negative",
  right "negative/positive" (zero-labelled samples excluded). In MMSA's ``MetricsTop`` these are
  ``Has0_acc_2`` / ``Has0_F1_score`` (left) and ``Non0_acc_2`` / ``Non0_F1_score`` (right).
* ``None`` is the paper's "-" (not reported). The paper reports no Acc-7 and no CH-SIMS results.
* Table 1 footnotes: ``*`` from [7] (the MISA paper), ``†`` from [5] (PMR), ``‡`` reproduced by the
  authors under the same conditions. Table 2 is on (unaligned) CMU-MOSI only.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

__all__ = [
    "PAPER", "TABLE1", "TABLE2", "TABLE1_NOTE", "TABLE2_NOTE", "PUBLISHED_LABEL", "METRIC_KEYS",
    "table1", "table2", "paper_row_for_model",
]

PAPER = "Fang, Liu, Zhang. Multi-grained Multimodal Interaction Network for Sentiment Analysis. ICASSP 2024"
PUBLISHED_LABEL = "published numbers, not measured here"

#: paper metric -> MMSA MetricsTop key(s); pairs are (negative/non-negative, negative/positive)
METRIC_KEYS = {
    "MAE": ("MAE",),
    "Corr": ("Corr",),
    "Acc-2": ("Has0_acc_2", "Non0_acc_2"),
    "F1": ("Has0_F1_score", "Non0_F1_score"),
}

Pair = Tuple[Optional[float], Optional[float]]


def _row(model, mae, corr, acc2: Pair, f1: Pair, setting=None, source=None, group=None, mmsa=None,
         ablation=None, pct_decimals=2) -> Dict:
    # pct_decimals: how many decimals the paper prints for Acc-2/F1 in this row (MAE/Corr: 3)
    return {"model": model, "MAE": mae, "Corr": corr, "Acc-2": acc2, "F1": f1, "setting": setting,
            "source": source, "group": group, "mmsa_model": mmsa, "ablation": ablation,
            "pct_decimals": pct_decimals}


# Table 1. Comparison with baselines on CMU-MOSI and CMU-MOSEI.
TABLE1: Dict[str, List[Dict]] = {
    "mosi": [
        _row("TFN", 0.901, 0.698, (None, 80.8), (None, 80.7), "Unaligned", "*", mmsa="tfn", pct_decimals=1),
        _row("CIA", 0.914, 0.689, (79.8, None), (79.5, None), "Aligned", "*", pct_decimals=1),
        _row("ICCN", 0.860, 0.710, (None, 83.0), (None, 83.0), "Aligned", "*", pct_decimals=1),
        _row("PMR", None, None, (None, 83.6), (None, 83.4), "Unaligned", "†", pct_decimals=1),
        _row("MulT", 0.871, 0.698, (None, 83.0), (None, 82.8), "Unaligned", "*", mmsa="mult", pct_decimals=1),
        _row("MISA", 0.783, 0.761, (81.8, 83.4), (81.7, 83.6), "Aligned", "*", mmsa="misa", pct_decimals=1),
        _row("MAG-BERT", 0.748, 0.790, (82.61, 84.42), (82.59, 84.71), "Aligned", "‡", mmsa="bert_mag"),
        _row("MMIN (Ours)", 0.741, 0.795, (83.53, 85.52), (83.46, 85.51), "Unaligned", None, mmsa="mmin"),
    ],
    "mosei": [
        _row("TFN", 0.593, 0.700, (None, 82.5), (None, 82.1), "Unaligned", "*", mmsa="tfn", pct_decimals=1),
        _row("CIA", 0.680, 0.590, (80.4, None), (78.2, None), "Aligned", "*", pct_decimals=1),
        _row("ICCN", 0.565, 0.713, (None, 84.2), (None, 84.2), "Aligned", "*", pct_decimals=1),
        _row("PMR", None, None, (None, 82.4), (None, 82.1), "Unaligned", "†", pct_decimals=1),
        _row("MulT", 0.580, 0.703, (None, 82.5), (None, 82.3), "Unaligned", "*", mmsa="mult", pct_decimals=1),
        _row("MISA", 0.555, 0.756, (83.6, 85.5), (83.8, 85.3), "Aligned", "*", mmsa="misa", pct_decimals=1),
        _row("MAG-BERT", 0.548, 0.757, (82.63, 84.84), (82.62, 84.86), "Aligned", "‡", mmsa="bert_mag"),
        _row("MMIN (Ours)", 0.542, 0.761, (83.84, 85.88), (83.91, 85.76), "Unaligned", None, mmsa="mmin"),
    ],
}

TABLE1_NOTE = (
    "Paper Table 1 (" + PUBLISHED_LABEL + "). *: from [7] (MISA paper); †: from [5] (PMR paper); "
    "‡: reproduced by the MMIN authors under the same conditions. Acc-2 and F1 are percentages "
    "given as left/right: left \"negative/non-negative\" (MMSA Has0_*), right \"negative/positive\" "
    "(MMSA Non0_*); \"-\" = not reported. The paper reports no Acc-7."
)

# Table 2. Ablation studies on CMU-MOSI (unaligned). `ablation` is MMIN's config value.
TABLE2: List[Dict] = [
    _row("w/o CIN", 0.773, 0.777, (82.07, 83.84), (82.03, 83.86), group="Role of Representations", ablation=["cin"]),
    _row("w/o FIN", 0.769, 0.783, (82.43, 84.27), (82.31, 84.45), group="Role of Representations", ablation=["fin"]),
    _row("w/o Text", 1.313, 0.554, (75.80, 78.05), (75.22, 77.62), group="Role of Modality", ablation=["text"]),
    _row("w/o Video", 0.775, 0.786, (81.92, 83.99), (81.86, 84.00), group="Role of Modality", ablation=["video"]),
    _row("w/o Audio", 0.801, 0.789, (81.63, 83.54), (81.68, 83.63), group="Role of Modality", ablation=["audio"]),
    _row("w/o L_sep", 0.755, 0.785, (82.49, 84.38), (82.50, 84.45), group="Role of Regularization", ablation=["sep"]),
    # as printed: w/o L_ac's Acc-2 left (82.97) exceeds its F1 left (81.98) by ~1 point, unlike
    # every other row; copied verbatim.
    _row("w/o L_ac", 0.784, 0.763, (82.97, 83.80), (81.98, 83.76), group="Role of Regularization", ablation=["ac"]),
    _row("w/o L_ap", 0.754, 0.789, (82.94, 84.45), (82.94, 84.50), group="Role of Regularization", ablation=["ap"]),
    _row("MMIN (Full)", 0.741, 0.795, (83.53, 85.52), (83.46, 85.51), group=None, ablation=[]),
]

TABLE2_NOTE = (
    "Paper Table 2, ablations on unaligned CMU-MOSI (" + PUBLISHED_LABEL + "). Acc-2 and F1 are "
    "percentages given as left/right: left \"negative/non-negative\" (MMSA Has0_*), right "
    "\"negative/positive\" (MMSA Non0_*). The paper gives no seeds or spread for these numbers."
)


def table1(dataset: str) -> List[Dict]:
    """Table 1 rows for 'mosi' or 'mosei'; [] for any other dataset (the paper has none)."""
    return list(TABLE1.get(str(dataset).lower(), []))


def table2() -> List[Dict]:
    return list(TABLE2)


def paper_row_for_model(dataset: str, mmsa_model: str) -> Optional[Dict]:
    """The Table 1 row for an MMSA model name (e.g. 'misa', 'mult', 'mmin'), if the paper has one."""
    for row in table1(dataset):
        if row["mmsa_model"] and row["mmsa_model"] == str(mmsa_model).lower():
            return row
    return None


def paper_row_for_ablation(ablation) -> Optional[Dict]:
    """The Table 2 row whose MMIN `ablation` list equals *ablation* (order-insensitive)."""
    key = sorted(ablation or [])
    for row in TABLE2:
        if sorted(row["ablation"]) == key:
            return row
    return None


def fmt(row: Dict, metric: str) -> str:
    """A paper cell as printed: 3 decimals for MAE/Corr, the row's decimals for Acc-2/F1 pairs
    joined with '/', '-' where the paper has none."""
    v = row[metric]
    if isinstance(v, tuple):
        return "/".join("-" if x is None else f"{x:.{row['pct_decimals']}f}" for x in v)
    return "-" if v is None else f"{v:.3f}"


def value(row: Dict, mmsa_key: str) -> Optional[float]:
    """A paper row's value for an MMSA MetricsTop key (percent for accuracies/F1), or None."""
    for name, keys in METRIC_KEYS.items():
        if mmsa_key in keys:
            v = row[name]
            return v[keys.index(mmsa_key)] if isinstance(v, tuple) else v
    return None


__all__ += ["paper_row_for_ablation", "value", "fmt"]
