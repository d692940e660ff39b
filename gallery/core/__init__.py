"""The small runtime every example uses: device, seeding, config, run dir, checkpoint, probes."""

from gallery.core.errors import (
           CheckpointError,
           ConfigError,
           DataError,
           DeviceError,
           ExplainedMistake,
           GalleryError,
)

__all__ = ["CheckpointError", "ConfigError", "DataError", "DeviceError", "ExplainedMistake",
           "GalleryError"]
