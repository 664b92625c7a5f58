"""A deadline for tests whose regression would hang (a FIFO read) rather than fail."""
import contextlib
import signal


class Hung(BaseException):
    """Raised in the blocked call: a BaseException, so no `except Exception` / `except OSError` in
    the code under test can swallow it and pass the test."""


@contextlib.contextmanager
def deadline(seconds=5):
    """Fail (Hung) instead of hanging: SIGALRM interrupts a blocking open/read."""
    def fire(signum, frame):
        raise Hung(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
