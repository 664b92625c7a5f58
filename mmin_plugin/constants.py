"""The project's constants, each defined once (splits, modalities, ablations, metrics).

What a dataset is (names, keys, dimensions, label ranges, metric families, KeyEval choices) lives
in :mod:`mmin_plugin.datasets`, one spec per dataset.

Layer-free: imported by the model, the MMSA integration, the experiments and the CLI alike.
"""
from __future__ import annotations

#: the splits of an MMSA-Standard feature file
SPLITS = ("train", "valid", "test")
#: MMIN's modality order, (L, V, A) as the paper's discriminator labels y_L, y_V, y_A
MODALITIES = ("text", "video", "audio")
#: paper Table 2 switches of the fusion inputs for the config key `ablation` (the full list, with the
#: modalities and the loss terms' switches, is `modeling.config.ABLATIONS`)
FUSION_ABLATIONS = ("cin", "fin")
#: MMSA's default seeds (its CLI and `MMSA_run` use 1111..1115)
DEFAULT_SEEDS = (1111, 1112, 1113, 1114, 1115)
#: `tune`'s default sampler and first search-training seed: outside DEFAULT_SEEDS, so no final run
#: repeats a search run (re-scoring seeds follow it: 2223, 2224, ...)
TUNE_SEED = 2222
#: display order of MMSA's MetricsTop keys (MOSI/MOSEI then SIMS); anything else goes after, sorted
METRIC_ORDER = ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score", "Mult_acc_2",
                "Mult_acc_3", "Mult_acc_5", "Mult_acc_7", "F1_score", "Acc_2", "Loss")
#: metrics where smaller is better (MMSA's KeyEval 'Loss' included)
LOWER_IS_BETTER = frozenset({"MAE", "Loss"})
#: the values of the config key `lengths_from`: the file's lengths, or recomputed from non-zero frames
LENGTHS_FROM = ("file", "nonzero")
