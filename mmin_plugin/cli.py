"""Command line: `python -m mmin_plugin {run,demo,demo-data,explain,compare,ablate} ...`.

`run` mirrors MMSA's own CLI (`python -m MMSA -m misa -d mosi -s 1111 ...`) with MMIN registered
and a few conveniences (`--feature-path`, `--pretrained`, `--max-epochs`, `--set key=value`).
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

DEMO_DEFAULTS = dict(n_train=96, n_valid=32, n_test=48)


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
    p.add_argument("--feature-path", help="absolute path of an MMSA-Standard feature file (overrides featurePath)")
    p.add_argument("--pretrained", help="BERT hub name or local directory for BERT-based models")
    p.add_argument("--max-epochs", type=int, help="cap on training epochs (MMSA itself has none)")
    p.add_argument("-s", "--seeds", type=int, nargs="+", action="extend", default=[], help="random seeds")
    p.add_argument("-g", "--gpu-ids", type=int, nargs="*", default=[], help="GPU ids; none = CPU or the freest GPU")
    p.add_argument("-n", "--num-workers", type=int, default=0, help="data loader workers")
    p.add_argument("-v", "--verbose", type=int, default=1, help="0 errors, 1 info, 2 debug")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mmin_plugin", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="MMSA_run for any model (MMIN registered)")
    p.add_argument("-m", "--model", default="mmin")
    p.add_argument("-d", "--dataset", default="mosi", choices=["mosi", "mosei", "sims"])
    p.add_argument("-c", "--config", default=None, help="your own MMSA config JSON file")
    p.add_argument("-t", "--tune", action="store_true")
    p.add_argument("-tt", "--tune-times", type=int, default=50)
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. --set d_model=64 ablation=text")
    p.add_argument("--model-save-dir", default=None)
    p.add_argument("--res-save-dir", default=None)
    p.add_argument("--log-dir", default=None)
    p.add_argument("-Ft", "--feature-T", default="")
    p.add_argument("-Fa", "--feature-A", default="")
    p.add_argument("-Fv", "--feature-V", default="")
    _common_run_options(p)

    p = sub.add_parser("demo-data", help="write an MMSA-Standard-layout demo feature file and a tiny BERT")
    p.add_argument("--out", default="mmin-demo", help="output folder")
    p.add_argument("--dataset", default="mosi", choices=["mosi", "mosei", "sims"])
    p.add_argument("--n-train", type=int, default=DEMO_DEFAULTS["n_train"])
    p.add_argument("--n-valid", type=int, default=DEMO_DEFAULTS["n_valid"])
    p.add_argument("--n-test", type=int, default=DEMO_DEFAULTS["n_test"])
    p.add_argument("--corrupt", action="store_true", help="insert NaN/inf values and zero-length sequences")
    p.add_argument("--left-pad", action="store_true",
                   help="audio/vision padded at the front (MulT authors' layout), lengths as MMSA's getLengths gives")
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("demo", help="make the demo data if missing and train/test MMIN on it with MMSA_run")
    p.add_argument("--out", default="mmin-demo", help="folder for data, weights, logs and results")
    p.add_argument("--dataset", default="mosi", choices=["mosi", "mosei", "sims"])
    p.add_argument("--max-epochs", type=int, default=6)
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--corrupt", action="store_true", help="use a demo file with NaN/inf and zero-length sequences")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides")

    p = sub.add_parser("explain", help="draw one sample's sparsemax attention maps and print support sizes")
    p.add_argument("--checkpoint", required=True, help="an MMIN checkpoint (MMSA's <model>-<dataset>.pth)")
    p.add_argument("--feature-path", required=True, help="the MMSA feature file holding the sample")
    p.add_argument("--sample", required=True, help="the sample's id in the file, or split:index (e.g. test:0)")
    p.add_argument("--out", default=None, help="folder for the PNGs and support.csv (default explain-<sample>)")
    p.add_argument("--config-file", default=None,
                   help="JSON of the run's parameters (default: <checkpoint stem>.config.json written by the trainer)")
    p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. --set pretrained=/models/bert")

    for name in ("compare", "ablate"):
        p = sub.add_parser(name, help="head-to-head comparison" if name == "compare" else "Table 2 ablations")
        p.add_argument("--dataset", default="mosi", choices=["mosi", "mosei", "sims"])
        if name == "compare":
            p.add_argument("--models", nargs="+", default=["mmin", "misa", "mult"])
        p.add_argument("--seeds", type=int, nargs="+", default=[1111, 1112, 1113, 1114, 1115])
        p.add_argument("--feature-path", help="MMSA-Standard feature file (default: MMSA's configured path)")
        p.add_argument("--pretrained", help="BERT hub name or local directory, passed to every BERT-based model")
        p.add_argument("--max-epochs", type=int, help="cap on training epochs, the same rule for every model (see mmin_plugin.experiments.compare)")
        p.add_argument("--out", default="mmin-results")
        p.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="overrides applied to every model")
        p.add_argument("-g", "--gpu-ids", type=int, nargs="*", default=[])
        p.add_argument("-n", "--num-workers", type=int, default=0)
    return parser


def cmd_run(a) -> int:
    from MMSA import MMSA_run

    import mmin_plugin  # noqa: F401  (registers MMIN, applies the compatibility layer)

    config = _parse_set(a.set)
    if a.feature_path:
        config["featurePath"] = str(Path(a.feature_path).resolve())
    if a.pretrained:
        config["pretrained"] = a.pretrained
    if a.max_epochs:
        config["max_epochs"] = a.max_epochs
    kw = {k: getattr(a, k) for k in ("model_save_dir", "res_save_dir", "log_dir") if getattr(a, k)}
    MMSA_run(a.model, a.dataset, config_file=a.config, config=config or None, seeds=a.seeds,
             is_tune=a.tune, tune_times=a.tune_times, feature_T=a.feature_T, feature_A=a.feature_A,
             feature_V=a.feature_V, gpu_ids=list(a.gpu_ids), num_workers=a.num_workers,
             verbose_level=a.verbose, **kw)
    return 0


def cmd_demo_data(a) -> int:
    from .experiments.data import ensure_demo

    paths = ensure_demo(a.out, dataset=a.dataset, n_train=a.n_train, n_valid=a.n_valid, n_test=a.n_test,
                        corrupt=a.corrupt, seed=a.seed, **({"left_pad": True} if a.left_pad else {}))
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

    kw = dict(dataset=a.dataset, seeds=a.seeds, feature_path=a.feature_path, pretrained=a.pretrained,
              max_epochs=a.max_epochs, out_dir=a.out, overrides=_parse_set(a.set), gpu_ids=list(a.gpu_ids),
              num_workers=a.num_workers)
    if ablate:
        compare.run_ablation(**kw)
    else:
        compare.run_comparison(models=a.models, **kw)
    return 0


def main(argv=None) -> int:
    from .errors import MMINError

    a = build_parser().parse_args(argv)
    try:
        if a.command == "run":
            return cmd_run(a)
        if a.command == "demo-data":
            return cmd_demo_data(a)
        if a.command == "demo":
            return cmd_demo(a)
        if a.command == "explain":
            return cmd_explain(a)
        return cmd_compare(a, ablate=a.command == "ablate")
    except MMINError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
