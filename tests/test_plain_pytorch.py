"""docs/plain-pytorch.md: MMIN trained from a plain PyTorch loop, the page's snippet run as written in a
fresh interpreter, which must leave MMSA unloaded."""
import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "plain-pytorch.md"


def snippet() -> str:
    return re.search(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S).group(1)


def test_snippet_is_ten_lines_after_the_imports():
    lines = [ln for ln in snippet().splitlines() if ln.strip()]
    body = [ln for ln in lines if not ln.startswith(("import ", "from "))]
    assert len(body) == 10, body


@pytest.mark.e2e
def test_snippet_trains_mmin_without_mmsa():
    """The snippet as written; a wrapper around MMIN.total_loss records L_senti at every step."""
    prologue = textwrap.dedent("""
        import json, sys
        import torch
        from mmin_plugin.modeling.model import MMIN
        torch.manual_seed(0)
        seen, total_loss = [], MMIN.total_loss

        def recording(self, outputs, labels):
            loss, terms = total_loss(self, outputs, labels)
            seen.append({k: float(v) for k, v in terms.items()})
            return loss, terms

        MMIN.total_loss = recording
    """)
    epilogue = "\nprint(json.dumps({'seen': seen, 'mmsa': 'MMSA' in sys.modules}))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", prologue + snippet() + epilogue], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["mmsa"]
    seen = out["seen"]
    assert len(seen) == 20 and set(seen[0]) == {"L_senti", "L_sep", "L_ac", "L_ap", "L_conf"}
    assert seen[-1]["L_senti"] < 0.5 * seen[0]["L_senti"], [s["L_senti"] for s in seen]  # it learns the batch
