"""Registration without import side effects (integration/autoregister.py, the lazy package root): each
claim checked in a fresh interpreter, since an import that already happened in this one proves nothing."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def fresh(code: str, timeout: int = 300) -> dict:
    """Run `code` in a new interpreter at the repository root (so it imports this checkout's
    mmin_plugin); it prints one JSON object as its last line, returned here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


LOADED = "def loaded():\n    return {m: m in sys.modules for m in ('torch', 'MMSA')}\n"


@pytest.mark.e2e
def test_import_root_loads_neither_torch_nor_mmsa_and_names_load_lazily():
    out = fresh("import json, sys\n" + LOADED + """
import mmin_plugin
root = loaded()
hooked = any(type(f).__name__ == "_RegisterOnImport" for f in sys.meta_path)
config = mmin_plugin.MMINConfig()            # numpy only
after_config = loaded()
from mmin_plugin import MMIN, sparsemax       # torch, still no MMSA
net = MMIN(config.__class__(use_bert=False, d_model=16, nheads=4))
try:
    mmin_plugin.no_such_name
    missing = "no error"
except AttributeError as e:
    missing = str(e)
print(json.dumps({"root": root, "hooked": hooked, "after_config": after_config, "after_model": loaded(),
                  "all_in_dir": sorted(set(mmin_plugin.__all__) - set(dir(mmin_plugin))), "missing": missing,
                  "lazy_is_cached": mmin_plugin.MMIN is MMIN}))
""")
    assert out["root"] == {"torch": False, "MMSA": False} and out["hooked"]
    assert out["after_config"] == {"torch": False, "MMSA": False}
    assert out["after_model"] == {"torch": True, "MMSA": False}
    assert out["all_in_dir"] == [] and "no_such_name" in out["missing"] and out["lazy_is_cached"]


@pytest.mark.e2e
def test_no_submodule_imports_mmsa_by_itself():
    """Every module of the package, imported one after the other: MMSA stays out of sys.modules
    (the first module that pulls it in is named). Optional extras that are missing are skipped."""
    out = fresh("""
import importlib, json, pkgutil, sys
import mmin_plugin
culprit, skipped, names = None, [], []
for info in pkgutil.walk_packages(mmin_plugin.__path__, "mmin_plugin."):
    if info.name == "mmin_plugin.__main__":
        continue  # runs the CLI
    try:
        importlib.import_module(info.name)
    except ImportError as e:  # an optional extra not installed here
        skipped.append(f"{info.name}: {e}")
        continue
    names.append(info.name)
    if "MMSA" in sys.modules:
        culprit = info.name
        break
print(json.dumps({"culprit": culprit, "skipped": skipped, "n": len(names),
                  "modeling": "mmin_plugin.modeling.model" in names}))
""")
    assert out["culprit"] is None, out
    assert out["n"] > 30 and out["modeling"], out


@pytest.mark.e2e
def test_importing_mmsa_afterwards_registers_mmin_and_removes_the_hook():
    out = fresh("import json, sys\n" + """
import importlib.util
import mmin_plugin
assert importlib.util.find_spec("MMSA") is not None and "MMSA" not in sys.modules  # a look-up only: hook stays
from MMSA.config import get_config_regression   # a submodule first: MMSA's __init__ runs, then the hook
from MMSA import run
args = get_config_regression("mmin", "mosi")      # the patched reader (a from-import made after registering)
hooked = any(type(f).__name__ == "_RegisterOnImport" for f in sys.meta_path)
print(json.dumps({"registered": "MMIN" in run.SUPPORTED_MODELS, "d_model": args["d_model"], "hooked": hooked}))
""")
    assert out == {"registered": True, "d_model": 128, "hooked": False}


@pytest.mark.e2e
def test_mmsa_imported_first_registers_at_once():
    out = fresh("import json, sys\n" + """
import MMSA
from MMSA import run
before = "MMIN" in run.SUPPORTED_MODELS
import mmin_plugin
hooked = any(type(f).__name__ == "_RegisterOnImport" for f in sys.meta_path)
print(json.dumps({"before": before, "after": "MMIN" in run.SUPPORTED_MODELS, "hooked": hooked}))
""")
    assert out == {"before": False, "after": True, "hooked": False}


@pytest.mark.e2e
def test_cli_help_loads_neither_torch_nor_mmsa():
    out = fresh("import contextlib, io, json, runpy, sys\n" + LOADED + """
sys.argv = ["mmin_plugin", "--help"]
buf = io.StringIO()
try:
    with contextlib.redirect_stdout(buf):
        runpy.run_module("mmin_plugin", run_name="__main__")
except SystemExit as e:
    code = e.code
print(json.dumps({**loaded(), "code": code, "usage": buf.getvalue().startswith("usage:")}))
""")
    assert out == {"torch": False, "MMSA": False, "code": 0, "usage": True}


@pytest.mark.e2e
def test_import_then_mmsa_run_trains_mmin(small_mosi, tmp_path):
    """The MMSA user's three lines, as written, in a fresh interpreter (one capped epoch)."""
    config = {"featurePath": str(Path(small_mosi["feature_path"]).resolve()), "pretrained": small_mosi["bert_dir"],
              "d_model": 16, "nheads": 4, "fine_layers": 1, "fusion_ff_dim": 32, "disc_hidden": 8, "max_epochs": 1}
    out = fresh(f"""
import json
import mmin_plugin
from MMSA import MMSA_run
MMSA_run("mmin", "mosi", config={config!r}, seeds=[1111], model_save_dir={str(tmp_path / "m")!r},
         res_save_dir={str(tmp_path / "r")!r}, log_dir={str(tmp_path / "l")!r}, gpu_ids=[], num_workers=0,
         verbose_level=0)
print(json.dumps({{"ok": True}}))
""", timeout=600)
    assert out == {"ok": True}
    assert (tmp_path / "m" / "mmin-mosi.pth").is_file() and (tmp_path / "r" / "normal" / "mosi.csv").is_file()
