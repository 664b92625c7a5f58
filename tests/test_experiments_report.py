"""aggregate.py / report.py / variants.py: tidy frame, mean ± std (ddof=0), best in bold, LaTeX."""
import numpy as np
import pandas as pd
import pytest

from mmin_plugin.experiments import compare, variants
from mmin_plugin.experiments.variants import RunSpec
from mmin_plugin.results import aggregate, report


def _row(run, seed, status="ok", **metrics):
    return {"run": run, "model": run, "ablation": "", "dataset": "mosi", "seed": seed, "status": status,
            "error": "" if status == "ok" else "RuntimeError: boom", "wall_time_s": 1.5, "epochs": 2,
            "stopped_by": "max_epochs", "max_epochs": 2, "early_stop": 8, "feature_path": "", "pretrained": "",
            "checkpoint": "", "metrics": metrics if status == "ok" else {}}


ROWS = [_row("a", 1, MAE=0.8, Corr=0.5, Has0_acc_2=0.70), _row("a", 2, MAE=0.6, Corr=0.7, Has0_acc_2=0.60),
        _row("b", 1, MAE=0.9, Corr=0.4, Has0_acc_2=0.75), _row("b", 2, status="failed")]
SPECS = [RunSpec("a", "a", "Model A"), RunSpec("b", "b", "model_b")]


def test_summary_is_groupby_mean_and_numpy_std():
    s = aggregate.summarize(ROWS, ["a", "b", "c"])
    assert list(s.index) == ["a", "b", "c"]
    assert s.at["a", "MAE|mean"] == pytest.approx(0.7) and s.at["a", "MAE|std"] == pytest.approx(np.std([0.8, 0.6]))
    assert s.at["b", "MAE|n"] == 1 and s.at["b", "n_run"] == 2 and s.at["b", "n_ok"] == 1
    assert s.at["b", "errors"] == ["seed 2: RuntimeError: boom"] and s.at["c", "n_run"] == 0
    assert s.at["a", "wall"] == pytest.approx(3.0) and s.at["a", "epochs"] == [2, 2]


def test_tidy_frame_csv_round_trip(tmp_path):
    path = tmp_path / "x.csv"
    aggregate.write_csv(ROWS, path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert list(df.columns) == aggregate.CSV_BASE_COLUMNS + ["MAE", "Corr", "Has0_acc_2"]
    assert df["seed"].tolist() == ["1", "2", "1", "2"] and df["MAE"].tolist()[-1] == ""
    back = aggregate.read_rows(path)
    assert back[0]["metrics"] == ROWS[0]["metrics"] and back[3]["metrics"] == {}


def test_markdown_best_in_bold_and_latex_table():
    md = report.render_markdown(ROWS, SPECS, "compare", {"dataset": "mosi", "seeds": [1, 2], "feature_path": None,
                                                         "max_epochs": 2, "pretrained": None, "overrides": {},
                                                         "n_planned": 4, "updated": "now"})
    line_a = next(line for line in md.splitlines() if line.startswith("| Model A |"))
    line_b = next(line for line in md.splitlines() if line.startswith("| model_b |"))
    assert "**0.700 ± 0.100**" in line_a and "**0.600 ± 0.100**" in line_a  # lowest MAE, highest Corr
    assert "**75.00**" in line_b and "partly failed" in line_b
    tex = report.render_latex(ROWS, SPECS, "compare", "mosi")
    assert r"\toprule" in tex and r"\textbf{0.700 $\pm$ 0.100}" in tex and "model\\_b" in tex
    assert r"\textbf{75.00}" in tex and r"MAE $\downarrow$" in tex


def test_variants_defined_once_and_design_variants_only_when_named():
    assert [s.name for s in compare.ablation_specs()] == [f"mmin-{v.name}" for v in variants.PAPER_VARIANTS]
    specs = compare.ablation_specs(["full", "ca-ffn", "ca-positions", "sep-sum"])
    assert [s.config for s in specs] == [{"ablation": []}, {"ablation": [], "ca_ffn": True},
                                         {"ablation": [], "ca_positions": True},
                                         {"ablation": [], "sep_reduction": "sum"}]
    assert all(s.label.startswith("design:") for s in specs[1:])
    assert compare.ABLATION_VARIANTS == variants.ABLATION_VARIANTS


def test_cli_choices_come_from_constants():
    from mmin_plugin import cli
    from mmin_plugin.constants import DATASETS, DEFAULT_SEEDS

    p = cli.build_parser()
    a = p.parse_args(["ablate", "--variants", "wo-cin", "sep-sum"])
    assert a.variants == ["wo-cin", "sep-sum"] and a.seeds == list(DEFAULT_SEEDS)
    for ds in DATASETS:
        assert p.parse_args(["compare", "--dataset", ds]).datasets == [ds]
        assert p.parse_args(["tune", "-m", "mmin", "-d", ds]).dataset == ds
    assert p.parse_args(["compare", "--datasets", "mosi", "mosei"]).datasets == ["mosi", "mosei"]
    with pytest.raises(SystemExit):
        p.parse_args(["ablate", "--variants", "wo-nothing"])


def test_training_curves_show_attention_support_when_logged():
    """The trainer logs `valid_support/<CA module>` per epoch; the curve figure gets a panel for it."""
    import io

    from matplotlib.image import imread

    from mmin_plugin.results.report import plot_training_curves

    base = [{"epoch": e, "train_L_senti": 1 / e, "valid_Loss": 1 / e, "KeyEval": "Loss", "best": True}
            for e in (1, 2, 3)]
    with_support = [dict(h, **{"valid_support/text_from_audio/0": 10 - h["epoch"]}) for h in base]
    width = {name: imread(io.BytesIO(plot_training_curves(h, name))).shape[1]
             for name, h in (("plain", base), ("support", with_support))}
    assert width["support"] > width["plain"]  # a fourth column holds the support panel
