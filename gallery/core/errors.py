"""One exception family, so the command line can turn any of them into a one-line message."""


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
