"""integration/datasets.py: `register_dataset` makes MMSA's config readers, data loader and metrics know a new
dataset through the recorded patches; `compare` / the CLI register a new --dataset from --feature-path.
The end-to-end test is the issue's "Done when": a dataset built with `features build` from a CSV plus arrays
(dimensions unlike MOSI's), registered, and MMIN, MISA and MulT trained and tested on it through `compare`."""
import math
from pathlib import Path

import numpy as np
import pytest

import mmin_plugin  # noqa: F401  (registers MMIN, installs the patches)
from mmin_plugin import datasets
from mmin_plugin.errors import MMINConfigError
from mmin_plugin.integration import patching
from mmin_plugin.integration.datasets import SPEC_KEY, ensure_dataset, register_dataset, unregister_dataset

from .builders import make_clips


@pytest.fixture(scope="module")
def own_file(tmp_path_factory, tiny_bert):
    """A feature file built from clips with 7-d audio and 11-d video (MOSI: 5 and 20), text 32-d."""
    from mmin_plugin.integration.builder import build_features

    root = tmp_path_factory.mktemp("own")
    clips = make_clips(root / "clips")
    build_features(clips / "clips.csv", root / "own.pkl", encoder=tiny_bert, audio_dir=clips / "audio",
                   video_dir=clips / "video", max_text_len=12, progress=False)
    return root / "own.pkl"


@pytest.fixture
def mine(own_file):
    spec = register_dataset("Mine", own_file)
    yield spec
    unregister_dataset("mine")


def test_register_makes_mmsa_config_know_the_dataset_for_every_model(mine, own_file):
    from MMSA import run
    from MMSA.config import get_config_regression, get_config_tune

    assert mine.name == "mine" and mine.feature_dims == (32, 7, 11) and mine.seq_lens == (12, 12, 12)
    assert mine.sizes == {"train": 14, "valid": 5, "test": 5} and mine.metric_family == "mosi"
    assert "MINE" in run.SUPPORTED_DATASETS
    for model in ("mmin", "misa", "mult"):
        args = get_config_regression(model, "mine")
        assert args["featurePath"] == str(own_file) and list(args["feature_dims"]) == [32, 7, 11]
        assert args["train_samples"] == 14 and args["KeyEval"] == "Loss" and args["dataset_name"] == "mine"
        mosi = get_config_regression(model, "mosi")  # hyper-parameters: MOSI's (hyperparams_from)
        assert all(args[k] == mosi[k] for k in ("learning_rate", "batch_size"))
    assert get_config_tune("mult", "mine")["feature_dims"] == [32, 7, 11]


def test_loader_and_metrics_read_it_by_its_layout(mine):
    import MMSA.run as mrun
    from MMSA.config import get_config_regression
    from MMSA.utils import MetricsTop

    args = get_config_regression("mult", "mine")
    args.update(custom_feature=None, feature_T="", feature_A="", feature_V="")
    loaders = mrun.MMDataLoader(args, 0)
    assert args["dataset_name"] == "mine" and list(args["seq_lens"]) == [12, 12, 12]
    batch = next(iter(loaders["test"]))
    assert tuple(batch["audio"].shape[1:]) == (12, 7) and tuple(batch["vision"].shape[1:]) == (12, 11)
    assert len(loaders["train"].dataset) == 14
    fn = MetricsTop("regression").getMetics("mine")
    import torch

    y = torch.tensor([[-2.0], [1.0], [0.5]])
    assert set(fn(y, y)) == set(MetricsTop("regression").getMetics("MOSI")(y, y))  # MOSI-style metrics


def test_patches_are_recorded_listed_and_undoable(mine):
    from MMSA.utils.metricsTop import MetricsTop

    table = patching.describe()
    assert "MetricsTop.getMetics" in table and "DATASET_MAP" in table and "registered dataset" in table
    record = next(p for p in patching.patches() if p.owner is MetricsTop and p.name == "getMetics")
    try:
        assert patching.undo(MetricsTop, "getMetics") == 1
        with pytest.raises(KeyError):  # MMSA alone does not know the name
            MetricsTop("regression").getMetics("mine")
    finally:
        patching.patch(MetricsTop, "getMetics", record.replacement, record.reason)
    assert MetricsTop("regression").getMetics("mine")


def test_config_accepts_the_name_and_its_key_evals(mine):
    from mmin_plugin.modeling.config import MMINConfig

    assert MMINConfig(dataset_name="MINE", KeyEval="Non0_acc_2").dataset_name == "mine"
    with pytest.raises(MMINConfigError, match="KeyEval"):
        MMINConfig(dataset_name="mine", KeyEval="Mult_acc_3")
    with pytest.raises(MMINConfigError, match="register_dataset"):
        MMINConfig(dataset_name="yours")


def test_register_refuses_mmsas_names_and_missing_files(tmp_path, own_file):
    with pytest.raises(MMINConfigError, match="MMSA's own"):
        register_dataset("mosi", own_file)
    with pytest.raises(mmin_plugin.MMINDataError, match="not found"):
        register_dataset("x", tmp_path / "none.pkl")


def test_ensure_dataset_registers_a_handed_on_spec(mine):
    d = mine.to_dict()
    unregister_dataset("mine")
    assert datasets.lookup("mine") is None
    assert ensure_dataset(d) == mine and datasets.lookup("mine") == mine


def test_compare_registers_a_new_name_from_the_feature_file_and_hands_the_spec_on(own_file):
    from mmin_plugin.experiments.compare import check_datasets, dataset_config

    with pytest.raises(MMINConfigError, match="--feature-path"):
        check_datasets(["yours"])
    try:
        assert check_datasets(["Yours", "mosi"], own_file) == ["yours", "mosi"]
        assert dataset_config("yours")[SPEC_KEY] == datasets.get("yours").to_dict() and dataset_config("mosi") == {}
        with pytest.raises(MMINConfigError, match="label_range"):  # options re-register it
            check_datasets(["yours"], own_file, {"label_range": (-1, 1)})
    finally:
        unregister_dataset("yours")


def test_cli_asks_for_what_cannot_be_inferred(tmp_path, own_file, capsys):
    import pickle

    from mmin_plugin import cli

    with open(own_file, "rb") as f:
        data = pickle.load(f)  # written by this module's fixture
    for s in data.values():
        s["regression_labels"] = np.clip(s["regression_labels"], -0.9, 0.9)
    small = tmp_path / "small.pkl"
    with open(small, "wb") as f:
        pickle.dump(data, f)
    assert cli.main(["features", "register", "small", str(small)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--metric-family" in err and err.count("\n") == 1
    try:
        assert cli.main(["features", "register", "small", str(small), "--metric-family", "sims"]) == 0
        assert '"metric_family": "sims"' in capsys.readouterr().out
    finally:
        unregister_dataset("small")
    assert cli.main(["compare", "--dataset", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "--feature-path" in capsys.readouterr().err


@pytest.mark.e2e
def test_own_dataset_end_to_end_through_compare(tmp_path, tiny_bert):
    """features build (CSV + arrays, dims unlike MOSI's) -> compare MMIN, MISA, MulT on the new name -> one
    table and its statistics."""
    from mmin_plugin.experiments.compare import run_comparison
    from mmin_plugin.integration.builder import build_features
    from mmin_plugin.results.aggregate import read_rows

    clips = make_clips(tmp_path / "clips", seed=1)
    path = tmp_path / "own.mmin"  # the pickle-free format
    build_features(clips / "clips.csv", path, encoder=tiny_bert, audio_dir=clips / "audio",
                   video_dir=clips / "video", max_text_len=12, progress=False)
    try:
        rows = run_comparison(models=("mmin", "misa", "mult"), dataset="ours", seeds=(1111, 1112), feature_path=path,
                              pretrained=tiny_bert, max_epochs=1, out_dir=tmp_path / "out",
                              overrides={"mmin.d_model": 16, "mmin.nheads": 4, "mmin.fine_layers": 1,
                                         "mmin.fusion_ff_dim": 32, "mmin.disc_hidden": 8})
    finally:
        unregister_dataset("ours")
    assert [(r.run, r.status) for r in rows] == [(m, "ok") for m in ("mmin", "misa", "mult") for _ in (0, 1)], \
        [r.error for r in rows]
    for r in rows:
        assert r.dataset == "ours" and math.isfinite(r.metrics["MAE"]) and r.has_predictions
        assert list(r.config["feature_dims"][1:]) == [7, 11] and r.config["dataset_name"] == "ours"
    md = (tmp_path / "out" / "compare-ours.md").read_text()
    assert "| mmin |" in md and "| misa |" in md and "| mult |" in md and "Against the reference: mmin" in md
    table = read_rows(tmp_path / "out" / "compare-ours.csv")
    assert len(table) == 6 and (tmp_path / "out" / "compare-ours.png").is_file()


def test_a_trials_process_registers_the_handed_on_spec(mine, monkeypatch):
    import MMSA

    from mmin_plugin.integration import runner

    seen = []
    monkeypatch.setattr(MMSA, "MMSA_run", lambda model, dataset, config=None, **kw: seen.append((dataset, config)))
    d = mine.to_dict()
    unregister_dataset("mine")
    runner.mmsa_run("mult", "mine", config={SPEC_KEY: d, "batch_size": 4}, seeds=[1])
    assert seen == [("mine", {"batch_size": 4})] and datasets.lookup("mine") == mine


def test_tune_registers_from_the_feature_file_and_every_trial_carries_the_spec(own_file, tmp_path, monkeypatch):
    pytest.importorskip("optuna")
    from MMSA.trains import ATIO

    from mmin_plugin.experiments.tune import run_tune
    from mmin_plugin.integration import runner

    class Trainer:  # one epoch of MMSA's trainer protocol, scored
        def __init__(self, args):
            self.args = args

        def do_train(self, model, dataloader, return_epoch_results=False):
            self.do_test(model, dataloader, mode="VAL")

        def do_test(self, model, dataloader, mode="VAL", return_sample_results=False):
            return {"Loss": 0.4, "MAE": 0.5, "Corr": 0.3}

    configs = []

    def fake_run(model, dataset, config=None, seeds=(), **kw):
        configs.append(dict(config))
        trainer = ATIO().getTrain({"KeyEval": "Loss", "early_stop": 2, **config})  # instrumented by the trial
        trainer.do_train(None, None)
        Path(kw["model_save_dir"], f"{model}-{dataset}.pth").write_bytes(b"x")
        return [trainer.do_test(None, None, mode="TEST")]

    monkeypatch.setattr(ATIO, "getTrain", lambda self, args: Trainer(args))
    monkeypatch.setattr(runner, "mmsa_run", fake_run)
    try:
        run_tune("mult", "tuned", trials=2, final_seeds=[1111], feature_path=own_file, max_epochs=1,
                 out_dir=tmp_path / "tune", dataset_options={"language": "en"})
        spec = datasets.get("tuned").to_dict()
    finally:
        unregister_dataset("tuned")
    assert len(configs) == 3 and all(c[SPEC_KEY] == spec for c in configs)
