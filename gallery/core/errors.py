"""One exception family, so the command line can turn any of them into a one-line message."""

import contextlib


class GalleryError(Exception):
    """A problem the user can fix: bad config, missing data, a bad checkpoint, no such device."""


class ConfigError(GalleryError, ValueError):
    pass


class DeviceError(GalleryError, RuntimeError):
    pass


class CheckpointError(GalleryError, RuntimeError):
    pass


class DataError(GalleryError, RuntimeError):
    pass


class ExplainedMistake(GalleryError):
    """A mistake did what it is known to do (a known autograd error); the message says why and names the fix."""


class Diverged(GalleryError):
    """A loss became NaN or infinite: the run stopped, keeping its last good checkpoint."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run at the end of a step (after its checkpoint, when it can resume)."""

    def __init__(self, signum: int, step: int, out_dir, resumable: bool):
        super().__init__(f"stopped by signal {signum} after step {step}")
        self.signum, self.step, self.out_dir, self.resumable = signum, step, out_dir, resumable


def reraise_explained(err: RuntimeError, mistake: str, known: dict[str, tuple[str, str]]) -> None:
    """Raise `ExplainedMistake` from `err` when it is the autograd error `mistake` is known to cause.

    `known` maps a mistake to (a phrase of autograd's message, the explanation that names the fix).
    Returns otherwise, and the caller re-raises the original error.
    """
    if mistake in known:
        phrase, explanation = known[mistake]
        if phrase in str(err):
            raise ExplainedMistake(explanation) from err


@contextlib.contextmanager
def explained(mistake: str, known: dict[str, tuple[str, str]]):
    """Turn the autograd error `mistake` is known for into `ExplainedMistake`; let anything else through."""
    try:
        yield
    except RuntimeError as err:
        reraise_explained(err, mistake, known)
        raise
