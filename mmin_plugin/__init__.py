"""mmin-plugin: MMIN (Fang, Liu, Zhang, ICASSP 2024) as a model of the MMSA 2.2.1 toolkit.

`import mmin_plugin` applies the compatibility layer (MMSA on CPU and current torch) and
registers the model name 'mmin' into MMSA, so that `MMSA_run('mmin', 'mosi', ...)` works.
"""
from .errors import MMINConfigError, MMINDataError, MMINError, NonFiniteLossError
from .integration.registry import register, unregister
from .modeling import losses
from .modeling.sparsemax import Sparsemax, sparsemax

__all__ = [
    "sparsemax",
    "Sparsemax",
    "losses",
    "register",
    "unregister",
    "MMINError",
    "MMINDataError",
    "MMINConfigError",
    "NonFiniteLossError",
]
__version__ = "0.1.0"

register()
