"""A non-editable install works: a built wheel carries configs/ and runs from any directory."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

from tests.conftest import ROOT, run_module


def test_a_built_wheel_ships_the_configs_and_runs_outside_the_checkout(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps",
                            "--no-build-isolation", "--no-index", "-q", "-w", str(dist),
                            str(ROOT)], capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(dist.glob("detach_gallery-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for config in ("gan/gan.yaml", "tour/tour.yaml", "gan/data/ring8.yaml", "hydra.yaml",
                   "dqn/env/cartpole.yaml", "finetune/backbone/digits_cnn.yaml",
                   "tbptt/data/pydoc.yaml"):
        assert f"gallery/configs/{config}" in names

    # A scratch venv that sees the project venv's packages (torch, hydra, ...) but not the checkout.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=120)
    python = str(venv / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; "
                                              "print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index",
                              "-q", "--target", str(site), str(wheel)], capture_output=True,
                             text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-2000:]

    where = subprocess.run([python, "-c", "import gallery; print(gallery.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(site))
    out = tmp_path / "run"
    proc = run_module("gallery.gan", "steps=20", "device=cpu", "eval_every=20", "eval_samples=100",
                      "hidden=16", f"out_dir={out}", python=python, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((out / "summary.json").read_text())["steps"] == 20
