"""Peers: the libraries the gallery is measured against, installed once each with
`pip install --no-deps --target` into the gallery's cache, never as a dependency of the gallery
(they run on the project's own torch)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# TRL and exactly what `from trl import GRPOTrainer, DPOTrainer` imports beyond the gallery's
# dependencies (DPOTrainer alone needs psutil)
TRL = ("trl==1.16.0", "transformers", "accelerate", "datasets", "huggingface_hub", "tokenizers",
       "safetensors", "regex", "dill", "xxhash", "multiprocess", "fsspec", "pyarrow", "pandas",
       "hf-xet", "httpx2", "httpcore2", "truststore", "h11", "psutil")
# The peers a test compares against (marker `peer`): `scripts/test.sh --peers` installs them first
TEST_PEERS = {"trl": TRL, "torchdistill": ("torchdistill==1.1.5",)}


def folder(name: str) -> Path:
    """Where a peer goes: GALLERY_PEERS, or the gallery's cache (the tests keep a cache of their
    own, and point GALLERY_PEERS at the user's, where `scripts/test.sh --peers` installed them)."""
    import os

    from gallery.core.config import cache_root

    return Path(os.environ.get("GALLERY_PEERS") or cache_root()) / f"{name}-peer-deps"


def peer_path(name: str, packages: tuple[str, ...]) -> Path | None:
    """The folder `packages` are installed in (once: a marker file lists what is installed, and a
    longer list installs again), for `sys.path`; None when pip cannot install them (no network,
    no wheel)."""
    deps, listed = folder(name), " ".join(packages)
    marker = deps / ".installed"
    if not marker.is_file() or marker.read_text() != listed:
        print(f"installing {listed} into {deps} (once)", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                               "--target", str(deps), "--disable-pip-version-check", *packages],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr[-2000:], file=sys.stderr)
            return None
        marker.write_text(listed)
    return deps


def installed(name: str) -> Path | None:
    """The peer's folder when it is installed, without installing it (for tests: no network)."""
    deps = folder(name)
    return deps if (deps / ".installed").is_file() else None


if __name__ == "__main__":  # python -m scripts.measure.peers: install the tests' peers
    missing = [name for name, packages in TEST_PEERS.items() if peer_path(name, packages) is None]
    if missing:
        sys.exit(f"error: could not install the peers {', '.join(missing)} (pip needs the "
                 "package index)")
