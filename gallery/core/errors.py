"""One exception family, so the command line can turn any of them into a one-line message."""

import contextlib

# The command line's exit statuses: docs/exit-status.md is their table, and a test holds the two
# together.
EXIT_STATUS = {
    "finished": 0,  # the run ended (or --help, or a run that was finished already)
    "bug": 1,  # anything else: a traceback, which is a bug to report
    # a bad key, value, data file, device, checkpoint or out_dir; a mistake that raised its error
    "bad_input": 2,
    "diverged": 3,  # a loss became NaN or infinite; the last good checkpoint is kept
    "out_of_memory": 4,  # the CPU allocator or CUDA ran out of memory; the line names batch_size
    "fault": 5,  # the disk refused a write or the env raised mid-run; the last checkpoint is kept
    "interrupted_sigint": 130,  # Ctrl-C: stopped after the step, checkpoint saved (128 + SIGINT)
    "interrupted_sigterm": 143,  # SIGTERM, as a scheduler sends it: the same (128 + SIGTERM)
}


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


class RunFault(GalleryError, RuntimeError):
    """Something outside the gallery failed mid-run (a full disk, an environment that raised): the
    run stops, keeping its last checkpoint, and resumes from it once the fault is gone."""


class CheckpointWriteError(RunFault, CheckpointError):
    """A checkpoint could not be written; the one before it is as it was."""


class ExplainedMistake(GalleryError):
    """A mistake did what it is known to do (a known autograd error); the message says why and names
    the fix."""


class Diverged(GalleryError):
    """A loss became NaN or infinite: the run stopped, keeping its last good checkpoint."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped a run at the end of a step (after its checkpoint, when it can
    resume)."""

    def __init__(self, signum: int, step: int, out_dir, resumable: bool):
        super().__init__(f"stopped by signal {signum} after step {step}")
        self.signum, self.step, self.out_dir, self.resumable = signum, step, out_dir, resumable


def reraise_explained(err: RuntimeError, mistake: str, known: dict[str, tuple[str, str]]) -> None:
    """Raise `ExplainedMistake` from `err` when it is the autograd error `mistake` is known to
    cause.

    `known` maps a mistake to (a phrase of autograd's message, the explanation that names the fix).
    Returns otherwise, and the caller re-raises the original error.
    """
    if mistake in known:
        phrase, explanation = known[mistake]
        if phrase in str(err):
            raise ExplainedMistake(explanation) from err


@contextlib.contextmanager
def explained(mistake: str, known: dict[str, tuple[str, str]]):
    """Turn the autograd error `mistake` is known for into `ExplainedMistake`; let anything else
    through."""
    try:
        yield
    except RuntimeError as err:
        reraise_explained(err, mistake, known)
        raise
