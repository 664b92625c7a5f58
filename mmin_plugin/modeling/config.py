"""MMIN's configuration (to become the typed `MMINConfig`)."""
from __future__ import annotations

from ..constants import ABLATIONS
from ..errors import MMINConfigError


def _cfail(key, expected, found):
    raise MMINConfigError(f"config key '{key}': expected {expected}; found {found!r}")


def normalize_ablation(value, key="ablation"):
    """``None``/``''``/``[]`` -> ``[]``; ``'cin'``, ``'cin,text'``, ``['cin', 'text']`` -> a list of
    valid lower-case names (order kept, duplicates dropped).  Unknown names:
    :class:`MMINConfigError`."""
    if value is None:
        return []
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, (list, tuple, set, frozenset)):
        items = []
        for v in value:
            if not isinstance(v, str):
                _cfail(key, f"ablation names (strings) from {list(ABLATIONS)}", v)
            items.extend(v.split(","))
    else:
        _cfail(key, f"a list, a string or a comma-separated string of {list(ABLATIONS)}", value)
    out = []
    for it in items:
        name = it.strip().lower()
        if not name:
            continue
        if name not in ABLATIONS:
            _cfail(key, f"ablation names from {list(ABLATIONS)}", it.strip())
        if name not in out:
            out.append(name)
    return out
