"""`mmin_reference` is a pure NumPy/SciPy oracle: it must import, and run, with torch blocked."""
import subprocess
import sys
import textwrap
from pathlib import Path

import mmin_reference

BLOCK_TORCH_AND_IMPORT = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is blocked in this test: {name}")
            return None

    sys.meta_path.insert(0, BlockTorch())
    sys.modules["torch"] = None  # also defeats an already-cached import
    try:
        import torch
    except ImportError:
        pass
    else:
        raise SystemExit("torch was not blocked")

    import numpy as np
    import mmin_reference as ref
    import mmin_reference.sparsemax, mmin_reference.losses

    assert ref.sparsemax(np.array([1.0, 0.0, -np.inf])).tolist() == [1.0, 0.0, 0.0]
    assert ref.separation_loss([np.ones((2, 1))] * 3, [np.ones((2, 1))] * 3) == 24.0
    leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.") or m.startswith("mmin_plugin"))
    assert leaked == ["torch"] and sys.modules["torch"] is None, leaked
    print("ok")
    """
)


def test_reference_imports_and_runs_without_torch(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH_AND_IMPORT],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # found through the installed package, not through the cwd
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "ok"


def test_reference_sources_do_not_mention_torch_imports():
    for path in Path(mmin_reference.__file__).parent.glob("*.py"):
        for line in path.read_text().splitlines():
            stripped = line.strip()
            assert not stripped.startswith(("import torch", "from torch")), f"{path}: {line}"
