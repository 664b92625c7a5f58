"""mmin-plugin: MMIN (Fang, Liu, Zhang, ICASSP 2024) as a model of the MMSA 2.2.1 toolkit.

`import mmin_plugin` is light: it imports neither torch nor MMSA. MMIN is registered into MMSA
(model name 'mmin', plus the fixes that make MMSA 2.2.1 run on CPU and current torch) when MMSA
is imported, at once if it already is (`integration.autoregister`), so that
`import mmin_plugin; from MMSA import MMSA_run; MMSA_run('mmin', 'mosi', ...)` works.
The public names below are loaded on first use (PEP 562); `mmin_plugin.MMIN` needs torch only.

Layers: `mmin_plugin.modeling` (the network, its losses, sparsemax, its config; no MMSA),
`mmin_plugin.features` (reading, checking and making feature files; neither MMSA nor torch),
`mmin_plugin.integration` (everything that touches MMSA), `mmin_plugin.runs` (what produces a
trial folder: trial, sweep, backends, lock, fingerprint), `mmin_plugin.results` (what reads finished
trials: aggregation, statistics, reports), `mmin_plugin.experiments` (compare, ablate, tune, the
demo, explain), `mmin_plugin.cli`. Design notes: docs/design/.
"""
from importlib import import_module

from .errors import MMINConfigError, MMINDataError, MMINError, NonFiniteGradientError, NonFiniteLossError
from .integration import autoregister

#: public name -> (submodule, attribute; None = the submodule itself), imported on first access
_LAZY = {
    "MMIN": ("modeling.model", "MMIN"),
    "MMINConfig": ("modeling.config", "MMINConfig"),
    "sparsemax": ("modeling.sparsemax", "sparsemax"),
    "Sparsemax": ("modeling.sparsemax", "Sparsemax"),
    "losses": ("modeling.losses", None),
    "LOSS_TERMS": ("modeling.terms", "LOSS_TERMS"),
    "register": ("integration.registry", "register"),
    "unregister": ("integration.registry", "unregister"),
    "register_dataset": ("integration.datasets", "register_dataset"),
    "unregister_dataset": ("integration.datasets", "unregister_dataset"),
}

__all__ = [*_LAZY, "MMINError", "MMINDataError", "MMINConfigError", "NonFiniteLossError", "NonFiniteGradientError"]
__version__ = "0.2.0"


def __getattr__(name):
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    mod = import_module(f".{module}", __name__)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


autoregister.install()
