"""Run `MMSA_run` and get the per-seed test results back (MMSA itself only writes them to a CSV
as rounded mean*100 / std*100 tuples)."""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, List


@contextlib.contextmanager
def own_mmsa_handlers():
    """Remove (and close) the handlers each MMSA_run call adds to the 'MMSA' logger (MMSA adds a
    file and a console handler per call, so without this every later line is printed N times)."""
    lg = logging.getLogger("MMSA")
    before = list(lg.handlers)
    try:
        yield
    finally:
        for h in list(lg.handlers):
            if h not in before:
                lg.removeHandler(h)
                with contextlib.suppress(Exception):
                    h.close()


@contextlib.contextmanager
def capture_results():
    """Collect the test-result dict of every `MMSA.run._run` call made inside the block."""
    import MMSA.run as mrun

    captured: List[Dict] = []
    inner = mrun._run

    def _run(args, *a, **kw):
        result = inner(args, *a, **kw)
        if isinstance(result, dict):
            captured.append({k: v for k, v in result.items() if isinstance(v, (int, float))})
        return result

    mrun._run = _run
    try:
        yield captured
    finally:
        mrun._run = inner


def mmsa_run(model: str, dataset: str, **kwargs) -> List[Dict]:
    """`MMSA_run(model, dataset, **kwargs)`, returning one result dict per seed."""
    from MMSA import MMSA_run

    import mmin_plugin  # noqa: F401  (registration and compatibility layer)

    with own_mmsa_handlers(), capture_results() as results:
        MMSA_run(model, dataset, **kwargs)
    return results
