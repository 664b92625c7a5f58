"""The project's own exception type: every user-facing failure is one of these."""


class MMINError(Exception):
    """A clear, user-facing error (bad input file, bad configuration, non-finite loss...).

    Messages name the file, the key, what was expected and what was found.
    """


class MMINDataError(MMINError, ValueError):
    """A feature file is malformed or unsafe."""


class MMINConfigError(MMINError, ValueError):
    """A configuration value is invalid."""


class NonFiniteLossError(MMINError, FloatingPointError):
    """Training produced a NaN/inf loss; the best checkpoint on disk is left untouched."""


class NonFiniteGradientError(NonFiniteLossError):
    """Training produced a NaN/inf gradient with a finite loss; no optimizer step was taken with
    it and the best checkpoint on disk is left untouched (a NonFiniteLossError, so one handler
    catches both)."""
