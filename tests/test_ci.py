"""The CI recipe users copy: the workflow is valid, a GPU job cannot pass without a GPU, and the
smoke command and the lessons are real checks that fail when a pattern breaks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest
import torch

from gallery import gan, lessons, smoke, tbptt
from gallery.core.registry import examples
from tests.conftest import ROOT, run_here, run_module

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def check_workflow(path: Path) -> subprocess.CompletedProcess:
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    assert tool, "check-jsonschema comes with the dev extra"
    return subprocess.run([tool, "--builtin-schema", "vendor.github-workflows", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_the_workflows_are_valid_github_actions(tmp_path):
    assert WORKFLOWS
    for path in WORKFLOWS:
        proc = check_workflow(path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    broken = tmp_path / "broken.yml"  # the check can fail: a job with no runs-on and a bad key
    broken.write_text("on: push\njobs:\n  cpu:\n    stepz:\n      - run: echo hi\n")
    assert check_workflow(broken).returncode != 0


def test_the_workflow_runs_what_the_readme_promises():
    """A smoke job (smoke, lessons, JUnit), the fast tier once, the gates nightly, the GPU job."""
    text = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    cpu_job = text.split("\n  cpu:\n")[1].split("\n  gpu:\n")[0]
    # the fast tier runs smoke, lessons and the tour already
    assert "run: python -m gallery" not in cpu_job
    smoke_job = text.split("\n  smoke:\n")[1].split("\n  cpu:\n")[0]
    assert "- uses: ./" in smoke_job and "junit: smoke.xml" in smoke_job
    assert "path: smoke.xml" in smoke_job
    for needed in ('"3.10"', '"3.12"', "cache: pip",
                   'pytest -m "not slow and not gpu and not peer" -n 2',
                   "ruff check", "--gpus all", "--shm-size", "nvidia-smi", "pytest -m gpu",
                   "device=cuda", "GALLERY_GPU_ONLY", "schedule", "pytest -m slow",
                   "download.pytorch.org/whl/cpu", "vars.GPU_RUNNER_LABEL"):
        assert needed in text, needed


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_gpu_job_without_a_gpu_fails_instead_of_skipping_everything():
    for extra_env, args in (({"GALLERY_GPU_ONLY": "1"}, []), ({}, ["--require-gpu"])):
        proc = run_module("pytest", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gan.py",
                          *args, env=extra_env)
        # pytest's usage error
        assert proc.returncode == 4, proc.stdout[-1000:] + proc.stderr[-1000:]
        assert "CUDA is not available" in proc.stderr


def test_smoke_passes_on_cpu_and_writes_junit(tmp_path, capsys):
    report = tmp_path / "smoke.xml"
    assert smoke.main(["device=cpu", f"junit={report}"]) == 0
    out = capsys.readouterr().out
    suite = ElementTree.parse(report).getroot()
    assert suite.get("tests") == str(len(examples())) and suite.get("failures") == "0"
    for name in examples():
        assert f"PASS  {name}" in out


def test_smoke_fails_naming_the_example_whose_probe_breaks(tmp_path, monkeypatch, capsys):
    # The GAN's pattern loses its detach (retain_graph keeps it running): the probe sees grad in G.
    monkeypatch.setitem(gan.BY_MISTAKE, "none", gan.gan_step_retain_graph)
    # TBPTT's update stops detaching its state: the run breaks at the second chunk.
    monkeypatch.setitem(tbptt.BY_MISTAKE, "none", tbptt.tbptt_update_no_detach)
    report = tmp_path / "smoke.xml"
    assert smoke.main(["device=cpu", "examples=gan,tbptt", f"junit={report}"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  gan" in out and "the D step reached G" in out
    assert "FAIL  tbptt" in out and "backward through the graph a second time" in out
    assert "0 passed, 2 failed: gan, tbptt" in out
    assert ElementTree.parse(report).getroot().get("failures") == "2"


def test_smoke_rejects_bad_arguments():
    assert smoke.main(["nonsense"]) == 2 and smoke.main(["examples=nosuch"]) == 2


def test_every_lesson_passes_and_the_command_lists_them_all():
    proc = run_here("gallery", "lessons")
    assert proc.returncode == 0, proc.stdout[-2000:]
    for name in lessons.LESSONS:
        assert f"PASS  {name}" in proc.stdout
    assert f"{len(lessons.LESSONS)} passed, 0 failed" in proc.stdout
    assert len(lessons.LESSONS) >= 10


def test_a_failing_lesson_fails_the_command(monkeypatch, capsys):
    monkeypatch.setitem(lessons.LESSONS, "detach_shares_storage",
                        lambda: (_ for _ in ()).throw(AssertionError("no")))
    assert lessons.main([]) == 1
    assert "FAIL  detach_shares_storage" in capsys.readouterr().out
    assert lessons.main(["nosuch"]) == 2


def test_each_lesson_asserts_its_claim():
    """A lesson is a check: its body holds at least one assert (or raises on the unexpected
    path)."""
    import inspect

    for name, lesson in lessons.LESSONS.items():
        source = inspect.getsource(lesson)
        assert "assert " in source or "raise AssertionError" in source, name
        assert lesson.__doc__, f"{name} has no claim"


ACTION = ROOT / "action.yml"


def action_steps(runner_temp: Path, **inputs: str) -> list[tuple[str, dict]]:
    """The composite action's shell steps as GitHub would run them: each `run` script with its
    `env`, the `${{ ... }}` expressions filled from `inputs` (over the action's defaults), the
    action's path (this checkout) and the runner's temp folder."""
    import re

    import yaml

    action = yaml.safe_load(ACTION.read_text())
    values = {f"inputs.{k}": str(v["default"]) for k, v in action["inputs"].items()}
    values.update({f"inputs.{k.replace('_', '-')}": v for k, v in inputs.items()})
    values.update({"github.action_path": str(ROOT), "runner.temp": str(runner_temp)})

    def fill(text: str) -> str:
        return re.sub(r"\$\{\{\s*([\w.-]+)\s*\}\}", lambda m: values[m.group(1)], text)

    return [(step["run"], {k: fill(str(v)) for k, v in step.get("env", {}).items()})
            for step in action["runs"]["steps"] if "run" in step]


def test_the_action_is_a_valid_composite_action_with_the_promised_inputs():
    import yaml

    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent))
    proc = subprocess.run([tool, "--builtin-schema", "vendor.github-actions", str(ACTION)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    action = yaml.safe_load(ACTION.read_text())
    assert action["runs"]["using"] == "composite"
    assert {"device", "examples", "python-version"} <= set(action["inputs"])
    assert "${{ github.action_path }}" in ACTION.read_text()
    assert "pip install -e ." not in ACTION.read_text()


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_the_action_refuses_cuda_on_a_runner_without_a_gpu(tmp_path):
    script, env = action_steps(tmp_path / "runner", device="cuda")[1]
    venv = Path(env["GALLERY_VENV"])
    (venv / "bin").mkdir(parents=True)
    stand_in = venv / "bin" / "python"  # the project's python stands in for the action's venv
    stand_in.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    stand_in.chmod(0o755)
    proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **env})
    assert proc.returncode == 1
    assert "device=cuda, but torch sees no CUDA GPU on this runner" in proc.stderr
    assert not (tmp_path / "detach-gallery-smoke.xml").exists()


def test_the_action_installs_the_gallery_from_its_checkout_and_writes_junit_elsewhere(tmp_path):
    """The action's shell steps, run from a folder that is not the project (as in the calling
    repository's CI) into a fresh venv. Offline here, that venv sees the project venv's packages
    (torch, hydra, ...) through a .pth file, as test_install does; pip still builds and installs the
    gallery from the action's path, and nothing is imported from the checkout."""
    import sysconfig

    workspace, runner = tmp_path / "their-repo", tmp_path / "runner"
    workspace.mkdir()
    runner.mkdir()
    steps = action_steps(runner, examples="tbptt", **{"torch-index-url": ""})
    venv = Path(steps[0][1]["GALLERY_VENV"])
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    site = subprocess.run([str(venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    for script, env in steps:
        proc = subprocess.run(["bash", "-c", script], cwd=workspace, capture_output=True,
                              text=True, timeout=600,
                              env={**os.environ, **env,
                                   "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"})
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import gallery; print(gallery.__file__)"],
                           capture_output=True, text=True, cwd=workspace, check=True).stdout
    assert where.startswith(site)  # installed, not read from the checkout
    # the lessons ran last
    assert "PASS  tbptt" in proc.stdout and "passed, 0 failed" in proc.stdout
    suite = ElementTree.parse(workspace / "detach-gallery-smoke.xml").getroot()
    assert suite.get("tests") == "1" and suite.get("failures") == "0"
