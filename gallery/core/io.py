"""One way to write a file: to a temp file beside it, flushed and renamed, so no reader ever sees
half. And the folders a refused run made, found before and removed after."""

from __future__ import annotations

import contextlib
import io
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def atomic_write(path: Path | str, data: str | bytes,
                 before_replace: Callable[[], None] | None = None) -> Path:
    """Write `data` to `path` atomically; on any failure the old file (if any) is left as it was.

    `before_replace` runs once the new data is safely on disk, just before the rename (checkpoints
    use it to keep the old file as `previous.pt`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes 0600; a result should read like any other file
        os.chmod(tmp, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def torch_bytes(obj: Any) -> bytes:
    """What `torch.save(obj, file)` would write, as bytes (for `atomic_write`)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def download_timeout():
    """Downloads inside give up after $GALLERY_DOWNLOAD_TIMEOUT seconds without data (default 30)
    instead of waiting forever on a network that never answers. torchvision, torch.hub and urllib
    open their sockets without a timeout of their own, so the default timeout is theirs."""
    before = socket.getdefaulttimeout()
    socket.setdefaulttimeout(float(os.environ.get("GALLERY_DOWNLOAD_TIMEOUT", "30")))
    try:
        yield
    finally:
        socket.setdefaulttimeout(before)


def missing_folders(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def remove_empty(folders: list[Path]) -> None:
    """Remove those of `folders` (deepest first) that are empty: what a refused run made."""
    for folder in folders:
        with contextlib.suppress(OSError):  # not empty, or already gone
            folder.rmdir()
