"""Simulated test sets with a known truth, to measure how often the statistics of `stats` are wrong.

A world is one test set of `n_clips` MOSI-like clips (labels in [-3, 3] on a 1/3 grid, some 0) and
runs trained with seeds 1..S. A run m with seed s predicts label_i + sign_i * z_msi, so its absolute
error on clip i is |z_msi| with

    z_msi = c_i + delta_m + u_mi + g_ms + v_msi

* c_i: the clip's difficulty, shared by every model (Gamma, mean `difficulty`);
* delta_m: the model's real effect (0 for the reference and every null variant);
* u_mi ~ N(0, sd_model): a persistent per-model, per-clip part (the model is better on some clips);
  on the finite test set it makes two models of equal population MAE differ;
* g_ms ~ N(0, sd_seed_global), v_msi ~ N(0, sd_seed_clip): training noise of seed s, shared by the
  run's clips / per clip. `seed_sd` sets the seed-to-seed sd of test MAE (0.01 "low", 0.03 "high").

The truths: the population difference in MAE (new clips, new seeds) is F(delta) - F(0) with
F(x) = E_c E|N(c + x, tau^2)| (tau^2 = sd_model^2 + sd_g^2 + sd_v^2), computed by the folded-normal
mean; on this test set (new seeds, same clips and u) it is the clip average of the folded-normal
mean with the seed variance only. sign_i is shared by all models (clips a model over- or
under-predicts), so the other metrics behave too; only MAE has a computed truth.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

__all__ = ["World", "SCENARIOS", "make_world", "population_mae", "effect_for_difference", "folded_mean"]


@dataclasses.dataclass(frozen=True)
class World:
    """Parameters of a family of worlds (see the module docstring)."""

    n_clips: int = 686
    seed_sd: float = 0.01  # target seed-to-seed sd of a run's test MAE
    sd_seed_clip: float = 0.15  # per-clip part of the seed noise
    sd_model: float = 0.2  # persistent per-model, per-clip part
    difficulty: float = 0.75  # mean clip difficulty (~ a MOSI MAE)
    difficulty_shape: float = 2.0  # Gamma shape of the clip difficulty

    @property
    def sd_seed_global(self) -> float:
        """g's sd such that sd(test MAE over seeds) is about `seed_sd` (the per-clip part adds
        sd_seed_clip / sqrt(n_clips))."""
        return math.sqrt(max(self.seed_sd ** 2 - self.sd_seed_clip ** 2 / self.n_clips, 0.0))


#: the issue's scenarios: seed-to-seed sd of test MAE 0.01 ("low") or 0.03 ("high")
SCENARIOS = {"low": World(seed_sd=0.01), "high": World(seed_sd=0.03)}


def folded_mean(mu, sd):
    """E|X| for X ~ N(mu, sd^2)."""
    from scipy import stats

    mu = np.asarray(mu, float)
    return sd * math.sqrt(2 / math.pi) * np.exp(-mu ** 2 / (2 * sd * sd)) + mu * (1 - 2 * stats.norm.cdf(-mu / sd))


@functools.lru_cache(maxsize=64)
def _difficulty_grid(world: World, n: int = 20000) -> np.ndarray:
    from scipy import stats

    q = (np.arange(n) + 0.5) / n  # quantiles: a deterministic sample of the Gamma
    return stats.gamma.ppf(q, world.difficulty_shape, scale=world.difficulty / world.difficulty_shape)


@functools.lru_cache(maxsize=256)
def population_mae(world: World, delta: float) -> float:
    """F(delta): a model's population MAE (over clips, u and seeds)."""
    tau = math.sqrt(world.sd_model ** 2 + world.sd_seed_global ** 2 + world.sd_seed_clip ** 2)
    return float(np.mean(folded_mean(_difficulty_grid(world) + delta, tau)))


def effect_for_difference(world: World, difference: float) -> float:
    """The delta whose population MAE difference from delta = 0 is `difference`."""
    from scipy import optimize

    base = population_mae(world, 0.0)
    return float(optimize.brentq(lambda d: population_mae(world, d) - base - difference, -1.0, 1.0, xtol=1e-10))


def make_world(world: World, rng: np.random.Generator, effects: Mapping[str, float], seeds: Sequence[int],
               missing: Optional[Mapping[str, Sequence[int]]] = None) -> Dict:
    """One world: {"data": {run: {seed: {"ids", "labels", "preds"}}}, "truth_population": {run: MAE
    difference from the first run}, "truth_test_set": {...}, "clip": (c, sign, labels), "u": {run: u}}.
    `effects` {run: delta} (the first run is the reference); `missing` {run: seeds it lacks}."""
    n = world.n_clips
    labels = np.round(rng.uniform(-3, 3, n) * 3) / 3
    labels[rng.random(n) < 0.05] = 0.0
    c = rng.gamma(world.difficulty_shape, world.difficulty / world.difficulty_shape, n)
    sign = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    ids = np.array([f"clip{i:04d}" for i in range(n)])
    seed_sd = math.sqrt(world.sd_seed_global ** 2 + world.sd_seed_clip ** 2)
    data, truth_pop, truth_test, us = {}, {}, {}, {}
    runs = list(effects)
    base_pop = population_mae(world, effects[runs[0]])
    for run in runs:
        u = rng.normal(0, world.sd_model, n)
        us[run] = u
        truth_pop[run] = population_mae(world, effects[run]) - base_pop
        truth_test[run] = float(np.mean(folded_mean(c + effects[run] + u, seed_sd)))
        data[run] = {}
        for s in seeds:
            z = c + effects[run] + u + rng.normal(0, world.sd_seed_global) + rng.normal(0, world.sd_seed_clip, n)
            if missing and s in missing.get(run, ()):
                continue
            data[run][int(s)] = {"ids": ids, "labels": labels, "preds": labels + sign * z}
    ref_test = truth_test[runs[0]]
    truth_test = {r: v - ref_test for r, v in truth_test.items()}
    return {"data": data, "truth_population": truth_pop, "truth_test_set": truth_test, "clip": (c, sign, labels),
            "u": us}


def new_seed_mae(world: World, rng: np.random.Generator, w: Dict, run: str, effect: float = 0.0, n: int = 1) -> float:
    """MAE of `n` more seeds of `run` in world `w` (same clips and u), as published: one (n=1) or the
    best of n."""
    c, sign, labels = w["clip"]
    maes = []
    for _ in range(n):
        z = c + effect + w["u"][run] + rng.normal(0, world.sd_seed_global) + rng.normal(0, world.sd_seed_clip, len(c))
        maes.append(float(np.mean(np.abs(z))))
    return min(maes)


def _mcse(p: float, n: int) -> float:
    return math.sqrt(max(p * (1 - p), 1e-12) / max(n, 1))


def calibration(world: World, n_seeds: int, n_worlds: int, seed: int = 0, n_variants: int = 8,
                effect: float = 0.05, judge=None) -> Dict[str, float]:
    """How often the statistics are wrong in `n_worlds` worlds of each kind, at `n_seeds` seeds:

    * null tables (a reference and `n_variants` variants, no real effect): `fwer` (any † on the
      primary metric after Holm), `fwer_unadjusted` (any raw p < alpha), `fpr` (first variant's
      p < alpha), `fpr_test_set` (its seed-only interval excludes 0), `coverage` (its two-way
      interval holds the population difference 0), `coverage_test_set` (its seed-only interval
      holds this test set's difference), `paper_flag` / `paper_flag_best5` (one more seed of the
      reference, or the best of 5, outside the reference's seed-only prediction interval);
    * effect worlds (the reference and one run whose population MAE is worse by `effect`):
      `power` (†), `coverage_effect` (the two-way interval holds `effect`), `mdd` (median smallest
      detectable difference the table reports) and `power_predicted` (fraction of worlds whose
      reported mdd is <= `effect`, which should track `power`).

    `judge(data, reference) -> stats.ComparisonTable` (default `stats.compare_runs` on 'mosi'); a
    caller may route worlds through `report --from-predictions` instead. Each rate comes with its
    Monte Carlo standard error (`<name>_mcse`)."""
    from . import stats

    judge = judge or (lambda data, ref: stats.compare_runs(data, ref, "mosi"))
    rng = np.random.default_rng(seed)
    seeds = list(range(1, n_seeds + 1))
    names = [f"v{j}" for j in range(n_variants)]
    counts = dict.fromkeys(("fwer", "fwer_unadjusted", "fpr", "fpr_test_set", "coverage", "coverage_test_set",
                            "paper_flag", "paper_flag_best5", "power", "coverage_effect", "power_predicted"), 0)
    mdds = []
    for _ in range(n_worlds):
        w = make_world(world, rng, {"ref": 0.0, **dict.fromkeys(names, 0.0)}, seeds)
        t = judge(w["data"], "ref")
        cs = [t.get(r, t.primary) for r in names]
        c = cs[0]
        counts["fwer"] += any(t.marked(r) for r in names)
        counts["fwer_unadjusted"] += any(x.pvalue < t.alpha for x in cs)
        counts["fpr"] += c.pvalue < t.alpha
        counts["fpr_test_set"] += c.ci_test_set.excludes(0.0)
        counts["coverage"] += c.ci.contains(w["truth_population"]["v0"])
        counts["coverage_test_set"] += c.ci_test_set.contains(w["truth_test_set"]["v0"])
        pi = stats.prediction_interval(t.means["ref"].values["MAE"])
        counts["paper_flag"] += not pi.contains(new_seed_mae(world, rng, w, "ref"))
        counts["paper_flag_best5"] += not pi.contains(new_seed_mae(world, rng, w, "ref", n=5))
    delta = effect_for_difference(world, effect)
    for _ in range(n_worlds):
        w = make_world(world, rng, {"ref": 0.0, "a": delta}, seeds)
        t = judge(w["data"], "ref")
        c = t.get("a", t.primary)
        counts["power"] += t.marked("a")
        counts["coverage_effect"] += c.ci.contains(w["truth_population"]["a"])
        counts["power_predicted"] += math.isfinite(c.mdd) and c.mdd <= effect
        mdds.append(c.mdd)
    out: Dict[str, float] = {"n_seeds": n_seeds, "n_worlds": n_worlds, "seed_sd": world.seed_sd,
                             "n_clips": world.n_clips, "n_variants": n_variants, "effect": effect,
                             "mdd": float(np.nanmedian(mdds))}
    for k, v in counts.items():
        out[k] = v / n_worlds
        out[f"{k}_mcse"] = _mcse(v / n_worlds, n_worlds)
    return out
