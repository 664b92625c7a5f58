"""mmin-plugin: MMIN (Fang, Liu, Zhang, ICASSP 2024) as a model of the MMSA 2.2.1 toolkit."""
from . import losses
from .errors import MMINError
from .sparsemax import Sparsemax, sparsemax

__all__ = ["sparsemax", "Sparsemax", "losses", "MMINError"]
__version__ = "0.1.0"
