"""A deadline for tests whose regression would hang (a FIFO read) rather than fail."""
import contextlib
import signal


@contextlib.contextmanager
def deadline(seconds=5):
    """Fail (TimeoutError) instead of hanging: SIGALRM interrupts a blocking open/read."""
    def fire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
