"""Command line: `python -m mmin_plugin {run,demo,demo-data,convert,explain,compare,ablate,tune,patches,features} ...`.

`run` mirrors MMSA's own CLI (`python -m MMSA -m misa -d mosi -s 1111 ...`) with MMIN registered
and a few conveniences (`--feature-path`, `--pretrained`, `--max-epochs`, `--set key=value`).
`convert IN.pkl OUT` rewrites a feature file in the safe format (no pickle) that every model's
`featurePath` accepts. `features build` makes a feature file from a CSV of clips, per-clip audio/video
arrays and a BERT-style encoder; `features register NAME FILE` checks a file as a new dataset and
prints what was inferred (`run`/`compare`/`ablate`/`tune` register a new `--dataset` name from
`--feature-path` themselves).

Every user error ends as `error: ...` on stderr with exit status 2 and no traceback: argument
values are checked by the parser's types (paths, seeds, worker counts, epoch caps, model and
dataset names), errors found later are :class:`~mmin_plugin.errors.MMINError` (or an OSError
about a path) caught in :func:`main`.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import json
import os
import sys
from pathlib import Path

from . import datasets
from .features.synthetic import DEMO_SIZES


# --- argument types: each raises argparse.ArgumentTypeError -> "error: ..." and exit 2 ----------
def _int_at_least(lo, what):
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what} (an integer >= {lo}); found {text!r}") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected {what} (an integer >= {lo}); found {v}")
        return v
    parse.__name__ = what  # argparse names the type in its messages
    return parse


_positive = _int_at_least(1, "a positive integer")
_epochs = _int_at_least(1, "an epoch cap")
_seed = _int_at_least(0, "a seed")
_workers = _int_at_least(0, "a worker count")
_gpu = _int_at_least(0, "a GPU id")


def _existing_file(text):
    p = Path(text).expanduser()
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"expected an existing file; found {text!r} "
                                         f"({'a folder' if p.is_dir() else 'no such file'})")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"expected a readable file; found {text!r} (permission denied)")
    return str(p)


def _out_dir(text):
    """A folder to write into: an existing writable folder, or one that can be created (its first
    existing ancestor is a writable folder)."""
    p = Path(text).expanduser()
    if p.exists() and not p.is_dir():
        raise argparse.ArgumentTypeError(f"expected a folder to write into; found {text!r}, which is a file")
    q = p
    while not q.exists():
        q = q.parent
    if not q.is_dir() or not os.access(q, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"expected a writable folder; {str(q)!r} is not writable")
    return str(p)


def _out_file(text):
    p = Path(text).expanduser()
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"expected an output file; found {text!r}, which is a folder")
    _out_dir(str(p.parent) if str(p.parent) else ".")
    return str(p)


def _real_at_least(lo, strict, what):
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            v = float("nan")
        if not (v > lo if strict else v >= lo) or v != v or v == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}; found {text!r}")
        return v
    parse.__name__ = what
    return parse


_positive_real = _real_at_least(0.0, True, "a positive number")
_nonnegative_real = _real_at_least(0.0, False, "a number >= 0")


def _dataset(text):
    """A known dataset, or a new name (registered from --feature-path by the command)."""
    name = text.lower()
    if datasets.lookup(name) is None and not (name and all(c.isalnum() or c in "_-" for c in name)):
        raise argparse.ArgumentTypeError(f"expected a dataset in {list(datasets.names())} or a new name of letters, "
                                         f"digits, '_' and '-' (registered from --feature-path); found {text!r}")
    return name


def _builtin_dataset(text):
    name = text.lower()
    if not datasets.is_builtin(name):
        raise argparse.ArgumentTypeError(f"expected one of {[d.name for d in datasets.BUILTIN]}; found {text!r}")
    return name


def _dataset_options(p):
    """How a dataset MMSA does not know is registered from its feature file (what cannot be inferred)."""
    g = p.add_argument_group("a new dataset (registered from --feature-path; see docs/own-dataset.md)")
    g.add_argument("--metric-family", choices=sorted(datasets.METRIC_FAMILIES),
                   help="MMSA's metrics: 'mosi' (MOSI/MOSEI-style, labels in [-3, 3]) or 'sims' ([-1, 1]); "
                        "default: inferred from the labels")
    g.add_argument("--label-range", type=float, nargs=2, metavar=("LO", "HI"),
                   help="range of the regression labels (default: the metric family's)")
    g.add_argument("--language", choices=("en", "cn"), help="default: inferred from the raw text")
    g.add_argument("--text-dim", type=_positive, help="text width, for a file holding token ids only")
    g.add_argument("--hyperparams-from", type=_builtin_dataset,
                   help="whose datasetParams MMSA's models use (default: mosi, or sims for SIMS-style metrics)")


def _dataset_overrides(a) -> dict:
    out = {k: getattr(a, k, None) for k in ("metric_family", "label_range", "language", "text_dim",
                                            "hyperparams_from")}
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in out.items() if v is not None}


def known_models():
    """MMSA's SUPPORTED_MODELS plus registered ones (lower case); imports MMSA and registers MMIN."""
    from MMSA import run  # importing MMSA registers MMIN (integration/autoregister.py)

    return sorted({m.lower() for m in run.SUPPORTED_MODELS})


def _model(text):
    name = text.lower()
    known = known_models()
    if name not in known:
        import difflib

        near = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise argparse.ArgumentTypeError(f"expected a model in {known}; found {text!r}{hint}")
    return name


def _key_value(text):
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected key=value; found {text!r}")
    return text


def _parse_set(items):
    out = {}
    for item in items or []:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, found {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            try:
                out[k] = ast.literal_eval(v)
            except (ValueError, SyntaxError):
                out[k] = v
    return out


def _common_run_options(p):
    p.add_argument("--feature-path", type=_existing_file,
                   help="path of an MMSA-Standard feature file, pickle or safe format (overrides featurePath)")
    p.add_argument("--pretrained", help="BERT hub name or local directory for BERT-based models")
    p.add_argument("--max-epochs", type=_epochs,
                   help="cap on training epochs for every model, MMSA's included (the rule compare uses)")
    p.add_argument("-s", "--seeds", type=_seed, nargs="+", action="extend", default=[], help="random seeds")
    p.add_argument("-g", "--gpu-ids", type=_gpu, nargs="*", default=[], help="GPU ids; none = CPU or the freest GPU")
    p.add_argument("-n", "--num-workers", type=_workers, default=0, help="data loader workers")
    p.add_argument("-v", "--verbose", type=int, default=1, help="0 errors, 1 info, 2 debug")


def _experiment_options(p, name):
    """Options of `compare` / `ablate` / `tune` (choices from mmin_plugin.constants and experiments.variants)."""
    from .constants import DEFAULT_SEEDS, TUNE_SEED
    from .experiments.variants import DESIGN_VARIANTS, PAPER_VARIANTS
    from .runs.backends import BACKENDS

    if name == "tune":
        p.add_argument("-m", "--model", required=True, type=_model, help="MMSA model name (mmin, misa, mult, ...)")
        p.add_argument("-d", "--dataset", default="mosi", type=_dataset,
                       help="a dataset name; a new one is registered from --feature-path")
        p.add_argument("--trials", type=_positive, default=20, help="number of search trials")
        p.add_argument("--search", default="random", choices=("random", "optuna"),
                       help="Optuna's RandomSampler or TPESampler (constant_liar), both seeded")
        p.add_argument("--prune", default="none", choices=("none", "median", "halving"),
                       help="stop unpromising search trials by their per-epoch validation score")
        p.add_argument("--rescore-top", type=_int_at_least(0, "a count"), default=0, metavar="K",
                       help="re-score the K best configurations on --rescore-seeds more seeds (VALID) before choosing")
        p.add_argument("--rescore-seeds", type=_positive, default=2)
        p.add_argument("--seed", type=_seed, default=TUNE_SEED,
                       help="sampler seed and search-trial training seed (not one of the final seeds)")
        p.add_argument("--final-seeds", type=_seed, nargs="+", default=list(DEFAULT_SEEDS))
        p.add_argument("--space", type=_existing_file, metavar="JSON",
                       help="search space in MMSA's debugParams schema ({\"d_paras\": [keys], key: [values]}); "
                       "default: the model's MMSA tune space")
        p.add_argument("--no-final", dest="final", action="store_false",
                       help="stop after the search (and re-scoring): write the chosen config, retrain and test nothing")
    else:
        p.add_argument("--dataset", "--datasets", dest="datasets", nargs="+", default=["mosi"], type=_dataset,
                       help="dataset names; a new one is registered from --feature-path")
        p.add_argument("--seeds", type=_seed, nargs="+", default=list(DEFAULT_SEEDS))
    if name == "compare":
        p.add_argument("--models", nargs="+", type=_model, default=["mmin", "misa", "mult"])
    if name == "ablate":
        p.add_argument("--variants", nargs="+", choices=[v.name for v in PAPER_VARIANTS + DESIGN_VARIANTS],
                       help="default: paper Table 2's nine; design variants ("
                       + ", ".join(v.name for v in DESIGN_VARIANTS) + ") only when named")
    if name != "tune":
        p.add_argument("--primary", metavar="METRIC", default="MAE",
                       help="the metric whose Holm-adjusted p decides the † mark (default MAE)")
        p.add_argument("--reference", metavar="NAME",
                       help="the model (compare) or variant (ablate) every other is compared with; default: the first")
        p.add_argument("--config-file", nargs="+", type=_existing_file, default=[], metavar="JSON",
                       help="MMSA config files (e.g. tune's output), each used for the models it configures")
    p.add_argument("--feature-path", type=_existing_file,
                   help="MMSA-Standard feature file (default: MMSA's configured path)")
    p.add_argument("--pretrained", help="BERT hub name or local directory, passed to every BERT-based model")
    p.add_argument("--max-epochs", type=_epochs, help="cap on training epochs, the same rule for every model")
    p.add_argument("--out", default="mmin-results", type=_out_dir)
    p.add_argument("--set", nargs="*", type=_key_value, metavar="KEY=VALUE",
                   help="overrides; model.key applies to one model")
    p.add_argument("-g", "--gpu-ids", type=_gpu, nargs="*", default=[], help="serial backend: MMSA's gpu_ids")
    p.add_argument("-n", "--num-workers", type=_workers, default=0)
    _dataset_options(p)
    g = p.add_argument_group("where trials run")
    g.add_argument("--backend", default="serial", choices=BACKENDS)
    g.add_argument("--address", help="ray: 'auto' or 'ray://host:10001' joins a running cluster; default: local")
    g.add_argument("--cpus-per-trial", type=_positive_real, default=1.0)
    g.add_argument("--gpus-per-trial", type=_nonnegative_real, default=0.0,
                   help="ray: fractions share a GPU (0.5 = 2 per GPU)")
    g.add_argument("--max-concurrent", type=_positive, help="ray: at most this many trials at once")
    g.add_argument("--retries", type=_workers, default=0, help="re-run a failed trial up to N times")
    g.add_argument("--slurm-param", action="append", default=[], metavar="KEY=VALUE",
                   help="slurm: a submitit executor parameter (e.g. slurm_partition=gpu, timeout_min=120)")
    g.add_argument("--no-pool", dest="pool", action="store_false",
                   help="ray: each trial a Ray task in a fresh worker (default: long-lived actors, a child each)")
    g.add_argument("--reuse-workers", action="store_true",
                   help="ray --no-pool: a worker process runs several trials (default: one process a trial)")
    g.add_argument("--resume", action="store_true",
                   help="skip finished trials whose fingerprint (config, data, code versions...) is unchanged")
    g.add_argument("--resume-across-code-versions", action="store_true",
                   help="with --resume: also keep rows made by another version of this package, MMSA or torch")
    g.add_argument("--overwrite", action="store_true", help="replace the results in a non-empty --out")


def _sweep_options(a):
    from .errors import MMINConfigError
    from .runs.sweep import SweepOptions

    if a.resume_across_code_versions and not a.resume:
        raise MMINConfigError("--resume-across-code-versions: expected together with --resume; found it alone")

    return SweepOptions(backend=a.backend, address=a.address, cpus_per_trial=a.cpus_per_trial,
                        gpus_per_trial=a.gpus_per_trial, max_concurrent=a.max_concurrent, retries=a.retries,
                        resume=a.resume, overwrite=a.overwrite, reuse_workers=a.reuse_workers,
                        resume_across_code_versions=a.resume_across_code_versions,
                        pool=a.pool, slurm_params=_parse_set(a.slurm_param))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmin_plugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="MMSA_run for any model (MMIN registered)")
    p.add_argument("-m", "--model", default="mmin", type=_model, help="an MMSA model name or 'mmin'")
    p.add_argument("-d", "--dataset", default="mosi", type=_dataset,
                   help=f"one of {list(datasets.names())}, or a new name registered from --feature-path")
    p.add_argument("-c", "--config", default=None, type=_existing_file, help="your own MMSA config JSON file")
    p.add_argument("-t", "--tune", action="store_true")
    p.add_argument("-tt", "--tune-times", type=_positive, default=50)
    p.add_argument("--set", nargs="*", type=_key_value, metavar="KEY=VALUE",
                   help="config overrides, e.g. --set d_model=64 ablation=text")
    p.add_argument("--model-save-dir", default=None, type=_out_dir)
    p.add_argument("--res-save-dir", default=None, type=_out_dir)
    p.add_argument("--log-dir", default=None, type=_out_dir)
    p.add_argument("-Ft", "--feature-T", default=None, type=_existing_file)
    p.add_argument("-Fa", "--feature-A", default=None, type=_existing_file)
    p.add_argument("-Fv", "--feature-V", default=None, type=_existing_file)
    _common_run_options(p)
    _dataset_options(p)

    p = sub.add_parser("demo-data", help="write an MMSA-Standard-layout demo feature file and a tiny BERT")
    p.add_argument("--out", default="mmin-demo", type=_out_dir, help="output folder")
    p.add_argument("--dataset", default="mosi", type=_builtin_dataset)
    p.add_argument("--n-train", type=_positive, default=DEMO_SIZES["n_train"])
    p.add_argument("--n-valid", type=_positive, default=DEMO_SIZES["n_valid"])
    p.add_argument("--n-test", type=_positive, default=DEMO_SIZES["n_test"])
    p.add_argument("--corrupt", action="store_true", help="insert NaN/inf values and zero-length sequences")
    p.add_argument("--left-pad", action="store_true",
                   help="audio/vision padded at the front (MulT authors' layout), lengths as MMSA's getLengths gives")
    p.add_argument("--seed", type=_seed, default=0)

    p = sub.add_parser("demo", help="make the demo data if missing and train/test MMIN on it with MMSA_run")
    p.add_argument("--out", default="mmin-demo", type=_out_dir, help="folder for data, weights, logs and results")
    p.add_argument("--dataset", default="mosi", type=_builtin_dataset)
    p.add_argument("--max-epochs", type=_epochs, default=6)
    p.add_argument("--seed", type=_seed, default=1111)
    p.add_argument("--corrupt", action="store_true", help="use a demo file with NaN/inf and zero-length sequences")
    p.add_argument("--set", nargs="*", type=_key_value, metavar="KEY=VALUE", help="config overrides")

    p = sub.add_parser("explain", help="draw one sample's sparsemax attention maps and print support sizes")
    p.add_argument("--checkpoint", required=True, type=_existing_file,
                   help="an MMIN checkpoint (MMSA's <model>-<dataset>.pth)")
    p.add_argument("--feature-path", required=True, type=_existing_file,
                   help="the MMSA feature file holding the sample")
    p.add_argument("--sample", required=True, help="the sample's id in the file, or split:index (e.g. test:0)")
    p.add_argument("--out", default=None, type=_out_dir,
                   help="folder for the PNGs and support.csv (default explain-<sample>)")
    p.add_argument("--config-file", default=None, type=_existing_file,
                   help="JSON of the run's parameters (default: <checkpoint stem>.config.json written by the trainer)")
    p.add_argument("--set", nargs="*", type=_key_value, metavar="KEY=VALUE",
                   help="config overrides, e.g. --set pretrained=/models/bert")

    sub.add_parser("patches", help="list every change mmin_plugin makes to MMSA, and why")

    p = sub.add_parser("convert", help="rewrite a feature file without pickle (safe format; see "
                                       "mmin_plugin.features.safeformat)")
    p.add_argument("input", type=_existing_file, help="a feature file (pickle, read with the safe loader)")
    p.add_argument("output", type=_out_file, help="the file to write (e.g. features.npz)")
    p.add_argument("--max-bytes", type=_positive, default=None,
                   help="memory budget for reading INPUT (default: 4x its size + 64 MiB)")

    _features_parser(sub)

    for name, text in (("compare", "head-to-head comparison"), ("ablate", "Table 2 ablations"),
                       ("tune", "seeded search on VALID, then the chosen config retrained and tested once")):
        _experiment_options(sub.add_parser(name, help=text), name)
    _report_options(sub.add_parser("report", help="rebuild the tables of a compare/ablate folder, or compare "
                                                  "models trained anywhere from their saved predictions"))
    return parser


def _features_parser(sub) -> None:
    """`features build` (a feature file from clips) and `features register` (check a file as a dataset)."""
    p = sub.add_parser("features", help="make a feature file from your own clips, or check one as a new dataset")
    fsub = p.add_subparsers(dest="features_command", required=True)
    b = fsub.add_parser("build", help="CSV of clips + audio/video arrays + a BERT-style encoder -> a feature file")
    b.add_argument("--clips", required=True, type=_existing_file,
                   help="CSV with columns id, text, label, split (train/valid/test)")
    b.add_argument("--audio", type=_existing_dir, help="folder of <id>.npy arrays (T, d), one per clip")
    b.add_argument("--video", type=_existing_dir, help="folder of <id>.npy arrays (T, d), one per clip")
    b.add_argument("--encoder", required=True, type=_existing_dir,
                   help="a BERT-style encoder folder (config.json, weights, vocab) read offline")
    b.add_argument("--out", required=True, type=_out_file,
                   help="the feature file; .pkl = MMSA's pickle, anything else the pickle-free safe format")
    b.add_argument("--max-text-len", type=_positive, default=50, help="padded text length in tokens (MMSA: 50)")
    b.add_argument("--max-audio-len", type=_positive, help="padded audio length (default: the longest array)")
    b.add_argument("--max-video-len", type=_positive, help="padded video length (default: the longest array)")
    b.add_argument("--label-range", type=float, nargs=2, metavar=("LO", "HI"), default=(-3.0, 3.0),
                   help="labels outside are an error (default: MOSI's [-3, 3])")
    b.add_argument("--batch-size", type=_positive, default=32, help="clips per encoder batch")
    r = fsub.add_parser("register", help="check a feature file as a new dataset and print its inferred spec")
    r.add_argument("name", type=_dataset)
    r.add_argument("feature_path", type=_existing_file)
    _dataset_options(r)


def _existing_dir(text):
    p = Path(text).expanduser()
    if not p.is_dir():
        raise argparse.ArgumentTypeError(f"expected an existing folder; found {text!r} "
                                         f"({'a file' if p.exists() else 'no such folder'})")
    return str(p)


def cmd_features(a) -> int:
    if a.features_command == "build":
        from .integration.builder import build_features

        info = build_features(a.clips, a.out, encoder=a.encoder, audio_dir=a.audio, video_dir=a.video,
                              max_text_len=a.max_text_len, max_audio_len=a.max_audio_len,
                              max_video_len=a.max_video_len, label_range=tuple(a.label_range),
                              batch_size=a.batch_size)
        sizes = ", ".join(f"{s} {n}" for s, n in info["sizes"].items())
        print(f"wrote {a.out}: {sizes} clips; seq_lens {info['seq_lens']}, feature_dims {info['feature_dims']} "
              f"({info['format']})")
        return 0
    from .integration.datasets import register_dataset

    spec = register_dataset(a.name, a.feature_path, **_dataset_overrides(a))
    print(json.dumps(spec.to_dict(), indent=1))
    return 0


def _ensure_dataset(name, feature_path, a) -> None:
    """A --dataset name MMSA does not know: registered from --feature-path (else the error says so)."""
    from .experiments.compare import check_datasets

    check_datasets([name], feature_path, _dataset_overrides(a))


def cmd_run(a) -> int:
    """MMSA_run with MMIN registered; `--max-epochs` caps every model by compare's rule."""
    from MMSA import MMSA_run  # importing MMSA registers MMIN (integration/autoregister.py)

    from .integration.runner import epoch_cap

    _ensure_dataset(a.dataset, a.feature_path, a)

    config = _parse_set(a.set)
    if a.feature_path:
        config["featurePath"] = str(Path(a.feature_path).resolve())
    if a.pretrained:
        config["pretrained"] = a.pretrained
    if a.max_epochs:
        config["max_epochs"] = a.max_epochs  # MMIN's own trainer reads it; epoch_cap covers the rest
    kw = {k: getattr(a, k) for k in ("model_save_dir", "res_save_dir", "log_dir") if getattr(a, k)}
    with epoch_cap(a.max_epochs) if a.max_epochs else contextlib.nullcontext():
        MMSA_run(a.model, a.dataset, config_file=a.config, config=config or None, seeds=a.seeds,
                 is_tune=a.tune, tune_times=a.tune_times, feature_T=a.feature_T or "",
                 feature_A=a.feature_A or "", feature_V=a.feature_V or "", gpu_ids=list(a.gpu_ids),
                 num_workers=a.num_workers,
                 verbose_level=a.verbose, **kw)
    return 0


def cmd_convert(a) -> int:
    """Rewrite a feature file in the safe format (see mmin_plugin.features.safeformat)."""
    from .features.load import convert_file

    if Path(a.input).resolve() == Path(a.output).resolve():
        from .errors import MMINDataError

        raise MMINDataError(f"{a.output}: expected an output path different from the input")
    info = convert_file(a.input, a.output, max_bytes=a.max_bytes)
    print(f"wrote {a.output}: {info['arrays']} arrays, {info['bytes']} bytes (safe format, no pickle)")
    return 0


def cmd_demo_data(a) -> int:
    from .experiments.demo import ensure_demo

    paths = ensure_demo(a.out, dataset=a.dataset, n_train=a.n_train, n_valid=a.n_valid, n_test=a.n_test,
                        corrupt=a.corrupt, left_pad=a.left_pad, seed=a.seed)
    print(f"feature file: {paths['feature_path']}\ntiny BERT:    {paths['bert_dir']}")
    return 0


def cmd_demo(a) -> int:
    from .experiments.demo import run_demo

    run_demo(a.out, dataset=a.dataset, max_epochs=a.max_epochs, seed=a.seed, corrupt=a.corrupt,
             overrides=_parse_set(a.set))
    return 0


def cmd_explain(a) -> int:
    from .experiments.explain import explain

    explain(a.checkpoint, a.feature_path, a.sample, out_dir=a.out, config_file=a.config_file,
            overrides=_parse_set(a.set))
    return 0


def cmd_compare(a, ablate=False) -> int:
    from .experiments import compare

    kw = dict(dataset=a.datasets, seeds=a.seeds, feature_path=a.feature_path, pretrained=a.pretrained,
              max_epochs=a.max_epochs, out_dir=a.out, overrides=_parse_set(a.set), gpu_ids=list(a.gpu_ids),
              num_workers=a.num_workers, config_files=a.config_file, sweep=_sweep_options(a),
              reference=a.reference, primary=a.primary, dataset_options=_dataset_overrides(a))
    if ablate:
        compare.run_ablation(variants=a.variants, **kw)
    else:
        compare.run_comparison(models=a.models, **kw)
    return 0


def cmd_tune(a) -> int:
    from .experiments.tune import load_space, run_tune

    run_tune(a.model, a.dataset, trials=a.trials, search=a.search, seed=a.seed, final_seeds=a.final_seeds,
             feature_path=a.feature_path, pretrained=a.pretrained, max_epochs=a.max_epochs, out_dir=a.out,
             overrides=_parse_set(a.set), gpu_ids=list(a.gpu_ids), num_workers=a.num_workers,
             sweep=_sweep_options(a), prune=a.prune, rescore_top=a.rescore_top, rescore_seeds=a.rescore_seeds,
             dataset_options=_dataset_overrides(a),
             space=load_space(a.space, a.model) if a.space else None, final=a.final)
    return 0


def _report_options(p) -> None:
    """`report OUT` / `report --from-predictions SPEC.json --out DIR` (results/rebuild.py)."""
    p.add_argument("folder", nargs="?", type=_existing_dir, metavar="OUT",
                   help="a compare/ablate output folder: its tables are rebuilt from its trial records and saved "
                        "predictions (nothing is trained)")
    p.add_argument("--from-predictions", type=_existing_file, metavar="SPEC.json",
                   help='{"dataset": "mosi", "reference": RUN, "runs": {RUN: {SEED: "file.npz", ...}, ...}}; '
                        "each .npz holds ids, labels, preds")
    p.add_argument("--out", type=_out_dir, metavar="DIR", help="where --from-predictions writes its tables")
    p.add_argument("--primary", metavar="METRIC", help="the metric that decides † (default: the folder's, or MAE)")
    p.add_argument("--reference", metavar="NAME", help="OUT: the run every other is compared with (default: the "
                                                       "folder's)")
    p.add_argument("--detect", type=_positive_real, metavar="DIFF",
                   help="say how many seeds would detect this primary-metric difference (default: half the "
                        "smallest detectable one)")
    p.add_argument("--figure", action="store_true",
                   help="--from-predictions: also draw the PNG (about 1 s more; OUT always redraws its figure)")


def cmd_report(a) -> int:
    """Rebuild tables from records and predictions; imports neither torch nor MMSA."""
    from .errors import MMINConfigError
    from .results import rebuild

    if (a.folder is None) == (a.from_predictions is None):
        raise MMINConfigError("report: expected a folder OUT or --from-predictions SPEC.json (one of them)")
    if a.from_predictions is not None:
        if a.out is None:
            raise MMINConfigError("report --from-predictions: expected --out DIR")
        paths = rebuild.from_predictions(a.from_predictions, a.out, primary=a.primary, detect=a.detect,
                                         figure=a.figure)
    else:
        paths = rebuild.rebuild_folder(a.folder, reference=a.reference, primary=a.primary, detect=a.detect)
    print("written: " + "\n         ".join(str(x) for x in paths), flush=True)
    return 0


def cmd_patches(a) -> int:
    from .integration.patching import describe
    from .integration.registry import register

    register()  # installs every patch (importing mmin_plugin alone changes nothing in MMSA)

    print(describe())
    return 0


def main(argv=None) -> int:
    """Parse and run; a user error prints `error: ...` and returns 2 (argparse exits 2 itself)."""
    from .errors import MMINError

    a = build_parser().parse_args(argv)
    commands = {"run": cmd_run, "convert": cmd_convert, "demo-data": cmd_demo_data, "demo": cmd_demo,
                "explain": cmd_explain, "compare": cmd_compare, "ablate": lambda a: cmd_compare(a, ablate=True),
                "tune": cmd_tune, "patches": cmd_patches, "features": cmd_features, "report": cmd_report}
    try:
        return commands[a.command](a)
    except MMINError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path the parser could not foresee (disk full, permissions changed ...)
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
