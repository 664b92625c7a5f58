"""integration/registry.py, once per run: MMSA's config merge memoised, MMIN's config parsed once and
handed to the model and the trainer."""
import json
from pathlib import Path

import pytest

from mmin_plugin.integration import registry
from mmin_plugin.integration.runner import mmsa_config, mmsa_config_file
from mmin_plugin.modeling.config import MMINConfig


def _counting(from_args, calls):
    """MMINConfig.from_args, counting the parses (an MMINConfig passed in is returned as is: no parse)."""
    def counted(cls, args):
        if not isinstance(args, MMINConfig):
            calls.append(1)
        return from_args(cls, args)

    return counted


def test_merge_is_memoised_and_hands_out_independent_copies():
    a = mmsa_config("mmin", "mosi")
    merges = len(registry._MERGED)
    b = mmsa_config("mmin", "mosi")
    assert len(registry._MERGED) == merges and a == b and a is not b
    a["feature_dims"][0] = -1  # MMSA's loader mutates the args it gets, in place
    assert mmsa_config("mmin", "mosi")["feature_dims"][0] == b["feature_dims"][0] != -1


def test_merge_sees_a_rewritten_config_file(tmp_path):
    path = tmp_path / "config.json"
    config = mmsa_config_file("config_regression.json")
    path.write_text(json.dumps(config))
    assert mmsa_config("tfn", "mosi", str(path))["batch_size"] == config["tfn"]["datasetParams"]["mosi"]["batch_size"]
    config["tfn"]["datasetParams"]["mosi"]["batch_size"] = 3
    path.write_text(json.dumps(config))
    assert mmsa_config("tfn", "mosi", str(path))["batch_size"] == 3


def test_tune_sampling_is_never_memoised():
    from MMSA.config import get_config_tune

    searched = ("batch_size", "learning_rate", "d_model", "dropout", "alpha")
    draws = {tuple(get_config_tune("mmin", "mosi")[k] for k in searched) for _ in range(12)}
    assert len(draws) > 1  # 12 draws from a grid of 162 points of these keys alone


def test_run_config_is_the_pre_run_parse_with_the_loaders_feature_widths(monkeypatch):
    args = mmsa_config("mmin", "mosi")
    calls = []
    original = MMINConfig.from_args.__func__
    monkeypatch.setattr(MMINConfig, "from_args", classmethod(_counting(original, calls)))
    parsed = MMINConfig.from_args(args)  # what the pre-run check does
    registry._RUN.update(args=args, config=parsed)
    assert registry._mmin_run_config(args) is parsed
    args["feature_dims"][1] = 33  # MMSA's data loader, between the check and the model
    updated = registry._mmin_run_config(args)
    assert updated.feature_dims[1] == 33 and updated == MMINConfig.from_args(args)
    calls.pop()  # that parse was the test's own check
    assert registry._mmin_run_config(args) is updated  # model and trainer get the same object
    other = dict(args)  # another run's args: parsed for that run
    assert registry._mmin_run_config(other) is not updated
    assert len(calls) == 2  # the pre-run parse and the other run's


@pytest.mark.e2e
def test_mmsa_run_parses_mmins_config_once(small_mosi, tmp_path, monkeypatch):
    """One MMSA_run of MMIN: MMINConfig.from_args runs once (the pre-run check), and the network
    and the trainer hold that same object (with the widths the data loader found)."""
    from MMSA import MMSA_run
    from MMSA.trains import ATIO

    calls, seen = [], {}
    original = MMINConfig.from_args.__func__
    monkeypatch.setattr(MMINConfig, "from_args", classmethod(_counting(original, calls)))
    get_train = ATIO.getTrain

    def spy(self, args):
        trainer = get_train(self, args)
        train = trainer.do_train

        def do_train(model, *a, **kw):
            seen["model"], seen["trainer"] = model.Model.config, trainer.config
            return train(model, *a, **kw)

        trainer.do_train = do_train
        return trainer

    monkeypatch.setattr(ATIO, "getTrain", spy)
    config = {"featurePath": str(Path(small_mosi["feature_path"]).resolve()), "pretrained": small_mosi["bert_dir"],
              "d_model": 16, "nheads": 4, "fine_layers": 1, "fusion_ff_dim": 32, "disc_hidden": 8, "max_epochs": 1}
    MMSA_run("mmin", "mosi", config=config, seeds=[1111], model_save_dir=tmp_path / "m", res_save_dir=tmp_path / "r",
             log_dir=tmp_path / "l", gpu_ids=[], num_workers=0, verbose_level=0)
    assert len(calls) == 1
    assert seen["model"] is seen["trainer"] and seen["model"].d_model == 16
    # every term of the loss table is logged, L_conf included, for training and validation
    from mmin_plugin.modeling.terms import TERM_NAMES

    (record,) = json.loads((tmp_path / "m" / "mmin-mosi.history.json").read_text())
    assert {f"train_{t}" for t in TERM_NAMES} | {f"valid_{t}" for t in TERM_NAMES if t != "L_senti"} <= set(record)
