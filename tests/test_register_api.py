"""The public registration API with a model that is not MMIN: the toy example of docs/register.md, run as written."""
import re
from pathlib import Path

import pandas as pd
import pytest

import mmin_plugin
from mmin_plugin.errors import MMINConfigError, MMINError

README = Path(__file__).resolve().parents[1] / "docs" / "register.md"


def readme_example() -> str:
    """The python block of docs/register.md."""
    text = README.read_text(encoding="utf-8")
    section = text.split("# Register your own model", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


@pytest.mark.e2e
def test_readme_toy_model_trains_through_mmsa_run(small_mosi, run_dirs, tmp_path):
    code = readme_example()
    assert 15 <= len(code.strip().splitlines()) <= 30
    # the example ends with an MMSA_run call on the user's data; run it on the demo file instead
    code = code.replace("/data/MOSI/unaligned_50.pkl", str(small_mosi["feature_path"]))
    code = code.replace("seeds=[1111]", f"seeds=[1111], **{run_dirs!r}".replace("PosixPath", "Path"))
    try:
        exec(compile(code, "README.md", "exec"), {"Path": Path})
        df = pd.read_csv(tmp_path / "results" / "normal" / "mosi.csv")
        assert list(df["Model"]) == ["toy"] and "MAE" in df.columns
    finally:
        mmin_plugin.unregister("toy")


def test_register_rejects_bad_configs_and_names():
    import torch

    class Net(torch.nn.Module):
        pass

    with pytest.raises(MMINConfigError, match="commonParams"):
        mmin_plugin.register("toy2", model=Net, trainer=object, config={"regression": {"lr": 1}})
    with pytest.raises(MMINError, match="give model, trainer and config"):
        mmin_plugin.register("toy2", model=Net)
    with pytest.raises(MMINError, match="MMSA's own"):
        mmin_plugin.register("tfn", model=Net, trainer=object, config={"commonParams": {}, "datasetParams": {}})
