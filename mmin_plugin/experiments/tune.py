"""`tune`: an honest hyper-parameter search. An Optuna study (runs/study.py: seeded random or
TPE sampling, journal in `--out`, optional pruning) over the model's MMSA tune space
(`debugParams.d_paras`), trials asynchronous with as many in flight as the backend has slots; every
search trial trains on TRAIN and is scored on its best VALID KeyEval, TEST is never evaluated during
the search; `rescore_top` re-scores the best configs on more seeds (VALID only); the chosen config is
retrained with the final seeds (disjoint from the search seeds) and tested once. Writes
`tune-<model>-<dataset>.{csv,md,json,optuna.log}`. Design notes: docs/design/experiments.md.
"""
from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import pandas as pd

from ..atomic import atomic_write_text
from ..constants import DEFAULT_SEEDS, LOWER_IS_BETTER, TUNE_SEED
from ..errors import MMINConfigError
from ..results import report
from ..results.aggregate import summarize
from ..runs.backends import ray_session
from ..runs.record import TrialRecord, read_record
from ..runs.study import PRUNERS, SAMPLERS, import_optuna, journal_path, open_study, spec_for
from ..runs.sweep import SweepOptions, prepare_out, run_trials
from ..runs.trial import Trial
from .compare import check_datasets, check_file, check_max_epochs, check_seeds, dataset_config, split_overrides
from .variants import RunSpec

logger = logging.getLogger("MMSA." + __name__)

__all__ = ["search_space", "load_space", "mmsa_config_file", "run_tune", "SEARCHES"]

SEARCHES = SAMPLERS
#: extra seeds each of the `rescore_top` best configurations is re-scored on
RESCORE_SEEDS = 2
#: config keys that are data/run options of the CLI, not hyper-parameters (kept out of the config file)
RUN_OPTIONS = ("featurePath", "pretrained", "max_epochs")
#: largest search-space file `load_space` reads (a space is a few hundred bytes)
MAX_SPACE_BYTES = 1 << 20


def _mmsa_config(name: str) -> Dict:
    from ..integration.runner import mmsa_config_file

    return mmsa_config_file(name)


def _model_config(model: str, section: str) -> Dict:
    """The model's entry of MMSA's config_regression.json / config_tune.json (registry.json's for a
    model registered by mmin_plugin)."""
    from ..integration.registry import registered

    entry = registered().get(model)
    if entry is not None:
        return copy.deepcopy(entry.config[section])
    data = _mmsa_config(f"config_{section}.json")
    if model not in data:
        known = sorted(k for k in data if k != "datasetCommonParams")
        raise MMINConfigError(f"model {model!r}: expected a model with an MMSA {section} config; found none "
                              f"(known: {known + sorted(registered())})")
    return data[model]


def search_space(model: str) -> Dict[str, object]:
    """{key: list of values | {sub-key: list} | fixed value} from the tune config's
    `debugParams.d_paras`, as MMSA's own `get_config_tune` samples it."""
    debug = _model_config(model, "tune").get("debugParams") or {}
    if not debug.get("d_paras"):
        raise MMINConfigError(f"model {model!r}: expected debugParams.d_paras in its tune config; found none")
    return {key: debug[key] for key in debug["d_paras"] if key in debug}


def load_space(path, model: str) -> Dict[str, object]:
    """A search space from a JSON file in MMSA's `debugParams` schema (`{"d_paras": [keys], key: [values]
    | value, ...}`): the keys of `d_paras`, each a list of values to search or one fixed value. For a
    model registered by mmin_plugin every key must be a config key of the model and every value one
    it accepts (checked one key at a time here, the combination when a trial starts)."""
    fp = Path(str(path))
    try:
        with fp.open("rb") as f:
            raw = f.read(MAX_SPACE_BYTES + 1)
    except OSError as exc:
        raise MMINConfigError(f"search space {fp}: expected a readable JSON file; found {exc.strerror}") from exc
    if len(raw) > MAX_SPACE_BYTES:
        raise MMINConfigError(f"search space {fp}: expected at most {MAX_SPACE_BYTES} bytes; found a larger file")
    try:
        data = json.loads(raw.decode("utf-8"))
    except ValueError as exc:
        raise MMINConfigError(f"search space {fp}: expected JSON; found invalid JSON ({exc})") from exc
    keys = data.get("d_paras") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k in data for k in keys):
        found = sorted(data) if isinstance(data, dict) else data
        raise MMINConfigError(f"search space {fp}: expected {{\"d_paras\": [keys], key: [values] | value}} with "
                              f"every key of d_paras present; found {found!r}")
    space = {k: data[k] for k in keys}
    for k, v in space.items():
        if isinstance(v, list) and not v:
            raise MMINConfigError(f"search space {fp}: key {k!r}: expected a non-empty list of values; found []")
    if model == "mmin":  # MMIN's keys have one typed home: MMINConfig
        import dataclasses

        from ..modeling.config import MMINConfig

        fields = {f.name: f for f in dataclasses.fields(MMINConfig)}
        for k, v in space.items():
            if k not in fields or k in RUN_OPTIONS:
                raise MMINConfigError(f"search space {fp}: key {k!r}: expected a hyper-parameter of {model} "
                                      f"(an MMINConfig key, not one of {list(RUN_OPTIONS)}); found an unknown key")
            for value in (v if isinstance(v, list) else [v]):
                try:
                    fields[k].metadata["check"](k, value)
                except MMINConfigError as exc:
                    raise MMINConfigError(f"search space {fp}: {exc}") from None
    return space


def _choices(space: Dict) -> Dict[str, list]:
    """Flattened searchable dimensions: 'key' or 'key.sub' -> list of values (fixed values excluded)."""
    out = {}
    for key, v in space.items():
        if isinstance(v, list):
            out[key] = v
        elif isinstance(v, dict):
            out.update({f"{key}.{k}": sub for k, sub in v.items() if isinstance(sub, list)})
    return out


def _assemble(space: Dict, picked: Dict[str, object]) -> Dict:
    """The config of one trial: picked values, fixed values of the space as they are."""
    cfg = {}
    for key, v in space.items():
        if isinstance(v, list):
            cfg[key] = picked[key]
        elif isinstance(v, dict):
            cfg[key] = {k: picked.get(f"{key}.{k}", sub) for k, sub in v.items()}
        else:
            cfg[key] = v
    return cfg


def mmsa_config_file(model: str, dataset: str, params: Dict) -> Dict:
    """An MMSA config (config_regression.json's schema) for `model` with `params` in
    `datasetParams[dataset]` (which MMSA merges last), for `MMSA_run(config_file=...)` and
    `compare --config-file`."""
    entry = _model_config(model, "regression")
    entry.setdefault("datasetParams", {}).setdefault(dataset, {}).update(copy.deepcopy(params))
    return {model: entry, "datasetCommonParams": _mmsa_config("config_regression.json")["datasetCommonParams"]}


def _flat(cfg: Dict) -> Dict:
    out = {}
    for k, v in cfg.items():
        if isinstance(v, dict):
            out.update({f"{k}.{s}": sv for s, sv in v.items()})
        else:
            out[k] = json.dumps(v) if isinstance(v, list) else v
    return out


def run_tune(model: str, dataset: str = "mosi", trials: int = 20, search: str = "random", seed: int = TUNE_SEED,
             final_seeds: Sequence[int] = DEFAULT_SEEDS, feature_path=None, pretrained=None, max_epochs=None,
             out_dir="mmin-results", overrides=None, gpu_ids=(), num_workers=0, verbose_level=0,
             sweep: Optional[SweepOptions] = None, prune: str = "none", rescore_top: int = 0,
             rescore_seeds: int = RESCORE_SEEDS, dataset_options: Optional[Dict] = None,
             space: Optional[Dict] = None, final: bool = True) -> Dict:
    """Search `trials` configs of `model`'s tune space on `dataset` (training seed `seed`, sampler
    seed `seed`), each scored on its best validation KeyEval (TEST not evaluated; `prune`: 'median' or
    'halving' stops unpromising trials by their per-epoch validation score); with `rescore_top` K,
    the K best are trained again with `rescore_seeds` more seeds (seed+1, ...) and ranked by their
    mean validation score; then retrain the best with `final_seeds` (disjoint from every search
    seed) and test once (`final=False`: no retrain, nothing tested; the chosen config file is still
    written). `space`: the search space (`load_space`; default the model's MMSA tune space). Keys fixed
    by `overrides` are not searched.
    A dataset MMSA does not know is registered from `feature_path` with `dataset_options`
    (`register_dataset`'s keywords).
    Returns {'chosen': config, 'search': rows, 'final': rows, 'rescore': rows, 'paths': {...}}."""
    from ..integration.registry import register

    register()  # MMIN registered and MMSA's compatibility layer applied now (idempotent)

    model = str(model).lower()
    (dataset,) = check_datasets([dataset], feature_path, dataset_options)
    if search not in SEARCHES:
        raise MMINConfigError(f"search: expected one of {list(SEARCHES)}; found {search!r}")
    import_optuna()  # the search engine: one error line, before --out is touched, if it is missing
    if trials < 1:
        raise MMINConfigError(f"trials: expected a positive integer; found {trials!r}")
    final_seeds, max_epochs = check_seeds(final_seeds), check_max_epochs(max_epochs)
    if prune not in PRUNERS:
        raise MMINConfigError(f"prune: expected one of {list(PRUNERS)}; found {prune!r}")
    if int(rescore_top) < 0 or int(rescore_seeds) < 1:
        raise MMINConfigError(f"rescore_top / rescore_seeds: expected >= 0 / >= 1; found {rescore_top} / "
                              f"{rescore_seeds}")
    search_seeds = [int(seed)] + ([int(seed) + k for k in range(1, int(rescore_seeds) + 1)] if rescore_top else [])
    if set(search_seeds) & set(final_seeds):
        raise MMINConfigError(f"seed: expected search seeds {search_seeds} that are not one of the final seeds "
                              f"{list(final_seeds)} (a final run would repeat a search run); found "
                              f"{sorted(set(search_seeds) & set(final_seeds))} in both")
    feature_path = check_file(feature_path, "feature file")
    sweep = sweep or SweepOptions()
    common, scoped = split_overrides(overrides)
    fixed = {**common, **scoped.get(model, {})}
    space = {k: v for k, v in (space if space is not None else search_space(model)).items() if k not in fixed}
    key_eval = str(_key_eval(model, dataset, fixed))
    lower = key_eval in LOWER_IS_BETTER
    _check_selection_rule(model, key_eval)
    base = {**dataset_config(dataset), **fixed}
    if feature_path:
        base["featurePath"] = feature_path
    if max_epochs:
        base["max_epochs"] = max_epochs
    if pretrained and "pretrained" not in fixed and _model_config(model, "regression")["commonParams"].get("use_bert"):
        base["pretrained"] = str(pretrained)
    out = Path(out_dir).resolve()
    stem = out / f"tune-{model}-{dataset}"

    def trial(run, s, cfg, skip_test, label):
        return Trial(out=str(out), run=run, model=model, dataset=dataset, seed=s, config={**cfg, **base},
                     label=label, skip_test=skip_test, gpu_ids=list(gpu_ids or []),
                     num_workers=int(num_workers or 0), verbose_level=verbose_level)

    with prepare_out(out, sweep.resume, sweep.overwrite), ray_session(sweep.backend, sweep.address, sweep.num_cpus):
        search_rows, configs = _search(model, dataset, search, int(trials), seed, space, lower, prune, sweep, stem,
                                       trial)
        return _choose_and_retrain(model, dataset, search, seed, final_seeds, lower, key_eval, fixed, sweep, stem,
                                   trial, search_rows, configs, int(rescore_top), search_seeds[1:], prune, final)


def _search(model, dataset, search, n, seed, space, lower, prune, sweep, stem, trial):
    """The study's trials, asked one at a time whenever the backend has a free slot (no rounds);
    on resume, trials the study started but never got a result for run again in their own folders.
    Returns (rows, configs) in trial-number order."""
    optuna = import_optuna()  # one error line if it is missing, before anything is asked of it
    CategoricalDistribution, TrialState = optuna.distributions.CategoricalDistribution, optuna.trial.TrialState

    path = journal_path(stem)
    study = open_study(path, f"{model}-{dataset}", search, seed, lower, prune)
    dims = _choices(space)
    dists = {k: CategoricalDistribution(list(range(len(v)))) for k, v in dims.items()}
    numbers: Dict[tuple, int] = {}
    searched: Dict[int, Dict] = {}  # trial number -> its config (the searched keys)

    def as_trial(number: int, trial_id: int, params: Dict) -> Trial:
        cfg = _assemble(space, {k: dims[k][params[k]] for k in dims})
        t = trial(f"{model}-trial-{number:03d}", seed, cfg, True, f"trial {number}")
        searched[number] = cfg
        t.study = spec_for(path, study, trial_id, prune)
        numbers[t.key] = number
        return t

    def source() -> Optional[Trial]:
        if len(study.get_trials(deepcopy=False)) >= n:
            return None
        ot = study.ask(dists)
        return as_trial(ot.number, ot._trial_id, ot.params)

    def on_final(t: Trial, rec: TrialRecord) -> None:
        number, score = numbers[t.key], _score(rec)
        if score is not None:
            study.tell(number, score)
        else:
            study.tell(number, state=TrialState.PRUNED if rec.status == "pruned" else TrialState.FAIL)

    unfinished = [as_trial(ft.number, ft._trial_id, ft.params) for ft in study.get_trials(deepcopy=False)
                  if ft.state == TrialState.RUNNING]
    run_trials(unfinished, sweep, desc=f"tune {model} {dataset} search", source=source, total=n, on_final=on_final)
    rows, configs = [], []
    for ft in sorted(study.get_trials(deepcopy=False), key=lambda ft: ft.number):
        t = as_trial(ft.number, ft._trial_id, ft.params)
        rec, problem = read_record(t.out, *t.key)
        if rec is None:  # no row (or an unreadable one): counted as failed, never ranked
            rec = TrialRecord(run=t.run, dataset=t.dataset, seed=t.seed, model=model, label=t.label,
                              kind="search", status="pruned" if ft.state == TrialState.PRUNED else "failed",
                              error=problem or f"no row (the study's state: {ft.state.name.lower()})")
        rows.append(rec)
        configs.append(searched[ft.number])
    return rows, configs


def _rank(scored, lower):
    """Indices of `scored` [(i, score)] best first (ties: the earlier trial)."""
    return [i for i, _ in sorted(scored, key=lambda t: (t[1] if lower else -t[1], t[0]))]


def _choose_and_retrain(model, dataset, search, seed, final_seeds, lower, key_eval, fixed, sweep, stem, trial,
                        search_rows, configs, rescore_top, rescore_seeds, prune, final=True) -> Dict:
    scored = [(i, _score(r)) for i, r in enumerate(search_rows) if _score(r) is not None]
    if not scored:
        raise MMINConfigError(f"tune: expected at least one search trial to finish; none of {len(search_rows)} did "
                              f"(first error: {search_rows[0].error if search_rows else 'none'})")
    ranked = _rank(scored, lower)
    best_i, rescore_rows, rescored = ranked[0], [], {}
    if rescore_top:  # the K best, trained again on more seeds (VALID only); ranked by the mean over all seeds
        top = ranked[:rescore_top]
        ts = [trial(f"{model}-rescore-{i:03d}", s, configs[i], True, f"trial {i} (re-score)")
              for i in top for s in rescore_seeds]
        rescore_rows = run_trials(ts, sweep, desc=f"tune {model} {dataset} re-score")
        for i in top:
            extra = [_score(r) for r in rescore_rows if r.run == f"{model}-rescore-{i:03d}"]
            if all(v is not None for v in extra):  # a config that fails on another seed is not chosen
                rescored[i] = (_score(search_rows[i]) + sum(extra)) / (1 + len(extra))
        if rescored:
            best_i = _rank(list(rescored.items()), lower)[0]
    chosen = configs[best_i]
    test_runs = sum(r.do_test_calls.get("TEST", 0) for r in search_rows + rescore_rows)
    if test_runs:
        raise RuntimeError(f"tune: the test split was evaluated {test_runs} time(s) during the search")

    # --- the chosen config, as an MMSA config file; the final retrain, tested once ---------------
    file_params = {k: v for k, v in {**chosen, **fixed}.items() if k not in RUN_OPTIONS}
    paths = {e: Path(f"{stem}.{e}") for e in ("csv", "md", "json")}
    atomic_write_text(paths["json"], json.dumps(mmsa_config_file(model, dataset, file_params), indent=2,
                                                default=str) + "\n")
    _write_search_csv(paths["csv"], search_rows, configs, best_i, rescored)
    final_trials = [trial(f"{model}-final", s, chosen, False, f"{model} (tuned)") for s in final_seeds] if final else []
    final_rows = run_trials(final_trials, sweep, desc=f"tune {model} {dataset} final") if final_trials else []
    md = _markdown(model, dataset, search, seed, key_eval, search_rows, configs, best_i, chosen, final_rows,
                   final_seeds, paths, test_runs, sweep.backend, prune, rescored, rescore_seeds)
    atomic_write_text(paths["md"], md)
    print()
    print(md)
    print("written: " + "\n         ".join(str(paths[e]) for e in ("md", "csv", "json")), flush=True)
    return {"chosen": chosen, "search": search_rows, "final": final_rows, "rescore": rescore_rows, "paths": paths,
            "best_trial": best_i, "rescored": rescored}


def _score(rec: TrialRecord) -> Optional[float]:
    """A search record's validation score, or None if the trial did not finish or its score is not
    finite (NaN/inf count as failed: a NaN key would otherwise win `min()` when it comes first)."""
    v = rec.valid_score if rec.status == "ok" else None
    return float(v) if v is not None and math.isfinite(v) else None


def _check_selection_rule(model: str, key_eval: str) -> None:
    """Ranking and the trainer's checkpoint choice must use the same quantity in the same direction.
    MMSA's own trainers maximise every KeyEval but 'Loss' (MAE included), so with KeyEval=MAE they
    keep the epoch of the *worst* validation MAE; such a search is refused."""
    from ..integration.registry import registered

    if model not in registered() and key_eval in LOWER_IS_BETTER and key_eval != "Loss":
        raise MMINConfigError(f"KeyEval={key_eval} with model {model!r}: MMSA's trainer keeps the epoch of the "
                              f"highest validation {key_eval} (it minimises only 'Loss'); expected KeyEval 'Loss' "
                              "or a higher-is-better metric (e.g. Corr, Has0_acc_2)")


def _key_eval(model: str, dataset: str, fixed: Dict) -> str:
    if "KeyEval" in fixed:
        return fixed["KeyEval"]
    from ..integration.runner import mmsa_config

    return mmsa_config(model, dataset).get("KeyEval", "Loss")


def _write_search_csv(path, rows, configs, best_i, rescored) -> None:
    recs = []
    for i, (r, cfg) in enumerate(zip(rows, configs)):
        recs.append({"trial": i, "run": r.run, "seed": r.seed, "status": r.status, "error": r.error, **_flat(cfg),
                     "key_eval": r.key_eval, "valid_score": r.valid_score, "rescored_mean": rescored.get(i),
                     "epochs": r.epochs, "wall_time_s": r.wall_time_s, "chosen": i == best_i})
    atomic_write_text(path, pd.DataFrame(recs).to_csv(index=False, na_rep="", lineterminator="\n"))


def _markdown(model, dataset, search, seed, key_eval, search_rows, configs, best_i, chosen, final_rows,
              final_seeds, paths, test_runs, backend, prune, rescored, rescore_seeds) -> str:
    spec = RunSpec(name=f"{model}-final", model=model, label=f"{model} (tuned)")
    summary = summarize(final_rows, [spec.name]) if final_rows else None
    n_ok = sum(r.status == "ok" for r in search_rows)
    n_pruned = sum(r.status == "pruned" for r in search_rows)
    epochs = sum(r.epochs or 0 for r in search_rows)
    best = search_rows[best_i]
    lines = [f"# Tuning {model} on {dataset.upper()}", "",
             f"- search: {search}, {len(search_rows)} trial(s) ({n_ok} finished, {n_pruned} pruned; pruner {prune}; "
             f"{epochs} epoch(s) in all), sampler and training seed {seed}, backend {backend}; "
             f"updated {_dt.datetime.now().isoformat(timespec='seconds')}; Optuna study "
             f"`{journal_path(paths['json'].with_suffix('')).name}`",
             f"- score: best validation `{key_eval}` of each trial "
             f"({'lower' if key_eval in LOWER_IS_BETTER else 'higher'} is better); the test split was evaluated "
             f"{test_runs} time(s) during the search",
             f"- chosen: trial {best_i} (validation {key_eval} {best.valid_score:.4f}"
             + (f"; mean {rescored[best_i]:.4f} with seeds {', '.join(map(str, rescore_seeds))}, the "
                f"{len(rescored)} best re-scored" if best_i in rescored else "") + ")",
             (f"- final: retrained with seeds {', '.join(map(str, final_seeds))}, tested once; " if final_rows else
              "- final: not run (`--no-final`; the test split was never evaluated); ")
             + f"config file `{paths['json'].name}` (`compare --config-file {paths['json'].name}`)", "",
             "## Chosen configuration", "", "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | `{json.dumps(v, default=str)}` |" for k, v in _flat(chosen).items()]
    if final_rows:
        lines += ["", "## Final result (TEST, mean ± std over the final seeds)", ""]
        lines += report.measured_table(summary, [spec], "compare")
    lines += ["", f"Search trials (config and validation score only): `{paths['csv'].name}`.", ""]
    return "\n".join(lines) + "\n"
