"""The README's main-job command, end to end: `python -m mmin_plugin demo` on full-length
MOSI-layout demo data, printing MMSA's metrics, and MMIN beating the training-mean predictor."""
import re

import pytest

from mmin_plugin.cli import main


@pytest.mark.e2e
def test_demo_prints_mmsa_metrics_and_beats_the_mean(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--max-epochs", "3"]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model |"))
    for metric in ("MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score", "Mult_acc_7"):
        assert metric in header
    row = next(line for line in out.splitlines() if line.startswith("| MMIN |"))
    values = [float(v) for v in row.strip("|").split("|")[1:]]
    assert len(values) == len(header.strip("|").split("|")) - 1
    m = re.search(r"gives test MAE ([0-9.]+); MMIN's test MAE is ([0-9.]+)", out)
    baseline, mmin = float(m.group(1)), float(m.group(2))
    assert mmin < 0.75 * baseline, (mmin, baseline)
    assert (tmp_path / "results" / "normal" / "mosi.csv").is_file()
