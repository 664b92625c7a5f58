"""mmin-plugin: MMIN (Fang, Liu, Zhang, ICASSP 2024) as a model of the MMSA 2.2.1 toolkit.

`import mmin_plugin` applies the fixes that make MMSA 2.2.1 run on CPU and current torch, and
registers the model name 'mmin' into MMSA, so that `MMSA_run('mmin', 'mosi', ...)` works.

Layers: `mmin_plugin.modeling` (the network, its losses, sparsemax, its config; no MMSA),
`mmin_plugin.features` (reading, checking and making feature files; neither MMSA nor torch),
`mmin_plugin.integration` (everything that touches MMSA), `mmin_plugin.runs` (what produces a
trial folder: trial, sweep, backends, lock, fingerprint), `mmin_plugin.results` (what reads finished
trials: aggregation, statistics, reports), `mmin_plugin.experiments` (compare, ablate, tune, the
demo, explain), `mmin_plugin.cli`. Design notes: docs/design/.
"""
from .errors import MMINConfigError, MMINDataError, MMINError, NonFiniteGradientError, NonFiniteLossError
from .integration.registry import register, unregister
from .modeling import losses
from .modeling.config import MMINConfig
from .modeling.model import MMIN
from .modeling.sparsemax import Sparsemax, sparsemax

__all__ = [
    "MMIN",
    "MMINConfig",
    "sparsemax",
    "Sparsemax",
    "losses",
    "register",
    "unregister",
    "MMINError",
    "MMINDataError",
    "MMINConfigError",
    "NonFiniteLossError",
    "NonFiniteGradientError",
]
__version__ = "0.2.0"

register()
