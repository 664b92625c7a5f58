"""The layers stay apart: read every module's imports (static, so nothing is imported to check).

modeling/     imports nothing of MMSA, the integration, the experiments or the CLI;
features/     (reading, checking, making feature files) imports neither MMSA nor torch, nor anything above it;
integration/  is the only layer that imports MMSA, and imports nothing of the experiments or the CLI;
runs/         (what produces a trial folder) reaches MMSA only through the integration; nothing of the CLI;
results/      (what reads finished trials) reaches MMSA only through the integration; nothing of the CLI;
experiments/  (compare, ablate, tune, demo, explain) reaches MMSA only through the integration; nothing of the CLI;
reference/    (mmin_reference) shares no code with mmin_plugin.
"""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "mmin_plugin"


def imported_modules(path: Path):
    """Absolute names of every module `path` imports (relative imports resolved)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module
            out.add(mod)
            out.update(f"{mod}.{alias.name}" for alias in node.names)  # `from . import x`
    return out


def _modules(folder):
    return sorted((PKG / folder).rglob("*.py")) if folder else sorted((ROOT / "reference").rglob("*.py"))


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


FORBIDDEN = {
    "modeling": ("MMSA", "mmin_plugin.integration", "mmin_plugin.experiments", "mmin_plugin.runs",
                 "mmin_plugin.results", "mmin_plugin.cli"),
    "features": ("MMSA", "torch", "mmin_plugin.integration", "mmin_plugin.experiments", "mmin_plugin.runs",
                 "mmin_plugin.results", "mmin_plugin.cli",
                 "mmin_plugin.modeling"),
    "integration": ("mmin_plugin.experiments", "mmin_plugin.runs", "mmin_plugin.results", "mmin_plugin.cli"),
    "runs": ("MMSA", "mmin_plugin.experiments", "mmin_plugin.cli"),
    "results": ("MMSA", "mmin_plugin.experiments", "mmin_plugin.cli"),
    "experiments": ("MMSA", "mmin_plugin.cli"),
    "": ("mmin_plugin",),  # reference/
}
CASES = [(layer, p) for layer in FORBIDDEN for p in _modules(layer)]


@pytest.mark.parametrize("layer, path", CASES, ids=_ids([p for _, p in CASES]))
def test_layer_imports(layer, path):
    bad = sorted(m for m in imported_modules(path) for f in FORBIDDEN[layer] if m == f or m.startswith(f + "."))
    assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_checker_sees_relative_imports(tmp_path):
    assert "mmin_plugin.integration.trainer" in imported_modules(PKG / "integration" / "registry.py")
    assert "MMSA.run" in imported_modules(PKG / "integration" / "registry.py")


def test_the_feature_layer_loads_neither_mmsa_nor_torch():
    """Also not through what its imports import: every module of features/ imported in a fresh
    interpreter (without running mmin_plugin/__init__.py, which registers MMIN into MMSA)."""
    mods = [f"mmin_plugin.features.{p.stem}" for p in _modules("features") if p.stem != "__init__"]
    code = ("import sys, types; pkg = types.ModuleType('mmin_plugin'); "
            f"pkg.__path__ = [{str(PKG)!r}]; sys.modules['mmin_plugin'] = pkg; import {', '.join(mods)}; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'MMSA')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout
