"""No result is lost or overwritten without a word; a signal stops a run cleanly; resume is
exact."""

from __future__ import annotations

import hashlib
import importlib
import json
import random
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gallery import dqn
from gallery.core.cli import compose
from tests.conftest import ROOT, run_here

TIMING = {"sec_per_step", "chars_per_sec", "env_steps_per_sec", "wall_seconds", "seconds"}
GAN = ["steps=600", "log_every=20", "eval_every=200", "hidden=16", "eval_samples=100", "device=cpu"]
TBPTT = ["steps=1200", "log_every=40", "eval_every=400", "hidden=32", "embed=8", "batch_size=8",
         "bptt_len=16", "eval_streams=64", "sample_len=20", "device=cpu"]


def cli(module: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, **kwargs)


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def rows(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in path.read_text().splitlines()]


def test_a_second_run_into_the_same_out_dir_is_refused_and_changes_nothing(tmp_path):
    args = ["gallery.gan", *GAN, "steps=20", f"out_dir={tmp_path}"]
    assert run_here(*args).returncode == 0
    before = digest(tmp_path)
    proc = run_here(*args)
    assert proc.returncode == 2 and "already holds a run" in proc.stderr
    assert "overwrite=true" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and digest(tmp_path) == before
    replaced = run_here(*args, "seed=3", "overwrite=true")
    assert replaced.returncode == 0
    assert json.loads((tmp_path / "summary.json").read_text())["seed"] == 3


def test_resume_without_a_checkpoint_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "fresh"
    proc = run_here("gallery.gan", *GAN, f"out_dir={out}", "resume=true")
    assert proc.returncode == 2 and f"no checkpoint at {out}/checkpoints/last.pt" in proc.stderr
    assert not out.exists()


def test_resume_of_a_finished_run_says_so_and_changes_nothing(tmp_path):
    assert run_here("gallery.tbptt", *TBPTT, "steps=20", "eval_every=20",
                    f"out_dir={tmp_path}").returncode == 0
    before = digest(tmp_path)
    proc = run_here("gallery.tbptt", *TBPTT, "steps=20", "eval_every=20", f"out_dir={tmp_path}",
                    "resume=true")
    assert proc.returncode == 0 and "is finished" in proc.stderr
    assert digest(tmp_path) == before
    more = run_here("gallery.tbptt", *TBPTT, "steps=30", "eval_every=30", f"out_dir={tmp_path}",
                    "resume=true")  # steps=<more> goes on
    assert more.returncode == 0
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 30


def test_a_sweep_gives_every_job_its_own_folder_and_goes_on_past_a_raising_mistake(tmp_path):
    proc = run_here("gallery.gan", "-m", "seed=0,1", "mistake=none,no_detach", *GAN, "steps=10",
                    "eval_every=10",
               f"out_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(jobs) == 4
    summaries = [json.loads((job / "summary.json").read_text()) for job in jobs]
    assert {(s["seed"], s["mistake"], s["status"]) for s in summaries} == {
        (0, "none", "finished"), (1, "none", "finished"), (0, "no_detach", "raised"),
        (1, "no_detach", "raised")}
    assert all("fake.detach()" in s["error"] for s in summaries if s["status"] == "raised")
    for job in jobs:  # each job's metrics are its own
        assert [r["step"] for r in rows(job / "metrics.jsonl") if "d_loss" in r] in ([10], [])


def stop_with_sigterm(module: str, command: list[str], out: Path, at_random: bool) -> str:
    """Run `command` until SIGTERM stops it (143, a checkpoint, no traceback); return the printed
    resume command. at_random: the test sends the signal at a random moment once the run has logged
    a new row; otherwise the command signals itself."""
    metrics = out / "metrics.jsonl"
    logged = metrics.read_text() if metrics.is_file() else ""
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    if at_random:
        deadline = time.time() + 120
        while not metrics.is_file() or len(metrics.read_text()) <= len(logged):
            assert proc.poll() is None and time.time() < deadline, \
                "the run ended before it could be interrupted"
            time.sleep(0.05)
        time.sleep(random.Random(module).uniform(0.2, 1.0))
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and (out / "checkpoints" / "last.pt").is_file()
    # stderr is a pipe here, as in a log: the stop's lines follow the run's with no blank line
    assert "\n\nSIGTERM: stopping after this step" not in "\n" + err, err[-2000:]
    assert "SIGTERM: stopping after this step" in err
    resume = err.split("Resume with: ")[1].strip().splitlines()[0]
    assert resume.startswith(f"python -m {module} ")
    assert resume.endswith(f"out_dir={out} resume=true")
    return resume


# `python -c SIGTERM_IN_EVAL <module> <its eval function> <n> *args`: the example's main() with its
# eval function wrapped so that its n-th call sends the process a real SIGTERM, which lands
# mid-eval.
SIGTERM_IN_EVAL = """
import importlib, os, signal, sys
module, name, nth = importlib.import_module(sys.argv[1]), sys.argv[2], int(sys.argv[3])
real, calls = getattr(module, name), []
def signal_then_evaluate(*args, **kwargs):
    calls.append(1)
    if len(calls) == nth:
        setattr(module, name, real)
        os.kill(os.getpid(), signal.SIGTERM)
    return real(*args, **kwargs)
setattr(module, name, signal_then_evaluate)
from gallery.core.cli import command_line
sys.argv = [sys.argv[1], *sys.argv[4:]]
command_line(module.EXAMPLE, module.train)
"""
# simsiam's first evaluate() is step 0's (the random encoder's baseline), so its first eval step is
# call 2
EVAL_FUNCTION = {"gallery.gan": ("evaluate", 1), "gallery.tbptt": ("validation_bpc", 1),
                 "gallery.finetune": ("accuracy", 1), "gallery.simsiam": ("evaluate", 2)}
FINETUNE = ["steps=600", "log_every=20", "eval_every=100", "device=cpu"]
SIMSIAM = ["steps=300", "log_every=10", "eval_every=100", "batch_size=32", "device=cpu"]


def stop_here(module: str, args: list[str], out: Path, eval_call: int, monkeypatch) -> list[str]:
    """Run `python -m module *args` in this process with its eval function wrapped so that its
    `eval_call`-th call sends the process a real SIGTERM (it lands mid-eval); check the stop (143, a
    checkpoint, no traceback) and return the printed resume command's arguments."""
    import importlib
    import os

    target = importlib.import_module(module)
    name = EVAL_FUNCTION[module][0]
    real, calls = getattr(target, name), []

    def signal_then_evaluate(*a, **kw):
        calls.append(1)
        if len(calls) == eval_call:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **kw)

    with monkeypatch.context() as patch:
        patch.setattr(target, name, signal_then_evaluate)
        proc = run_here(module, *args)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and (out / "checkpoints" / "last.pt").is_file()
    resume = proc.stderr.split("Resume with: ")[1].strip().splitlines()[0]
    assert resume.startswith(f"python -m {module} ")
    assert resume.endswith(f"out_dir={out} resume=true")
    return shlex.split(resume)[3:]


# gan's second signal comes at a random moment up to 1 s after a new row: 2,000 steps leave the
# resumed run seconds of training on a fast machine (600 steps once ran out before the signal)
@pytest.mark.parametrize("module, args", [("gallery.gan", [*GAN, "steps=2000"]),
                                          ("gallery.tbptt", TBPTT),
                                          ("gallery.finetune", FINETUNE),
                                          ("gallery.simsiam", SIMSIAM)])
def test_two_sigterms_then_resumes_match_the_uninterrupted_run_exactly(
        tmp_path, module, args, monkeypatch, pretrained_backbone):
    """Stopped twice and resumed each time with the printed command: the same rows, summary and
    weights as one straight run. The first stop lands inside the first eval step. gan runs as real
    processes, the second signal at a random moment once a new row is logged; the others run in this
    process, the second signal inside the resumed run's first eval step (a real SIGTERM each
    time)."""
    if module == "gallery.finetune":  # one pretrained backbone for every run
        args = [*args, f"backbone.checkpoint_dir={pretrained_backbone}"]
    straight, out = tmp_path / "straight", tmp_path / "resumed"
    function, nth = EVAL_FUNCTION[module]
    eval_every = int(next(a for a in args if a.startswith("eval_every=")).split("=")[1])
    if module == "gallery.gan":
        assert cli(module, *args, f"out_dir={straight}").returncode == 0
        first = [sys.executable, "-c", SIGTERM_IN_EVAL, module, function, str(nth), *args,
                 f"out_dir={out}"]
        resume = stop_with_sigterm(module, first, out, at_random=False)
    else:
        assert run_here(module, *args, f"out_dir={straight}").returncode == 0
        resume_args = stop_here(module, [*args, f"out_dir={out}"], out, nth, monkeypatch)
    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["step"] == eval_every  # it stopped after the eval step it was signalled in
    assert [r["step"] for r in rows(out / "metrics.jsonl")][-1] == eval_every
    if module == "gallery.gan":
        resume = stop_with_sigterm(module, [sys.executable, *shlex.split(resume)[1:]], out,
                                   at_random=True)
        resumed = subprocess.run([sys.executable, *shlex.split(resume)[1:]], capture_output=True,
                                 text=True, cwd=ROOT, timeout=300)
    else:
        again = stop_here(module, resume_args, out, 1, monkeypatch)
        assert torch.load(out / "checkpoints" / "last.pt",
                          weights_only=True)["step"] == 2 * eval_every
        resumed = run_here(module, *again)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert rows(out / "metrics.jsonl") == rows(straight / "metrics.jsonl")
    a, b = (json.loads((d / "summary.json").read_text()) for d in (out, straight))
    for s in (a, b):  # wall-clock fields aside
        s.pop("out_dir"), [s.pop(k, None) for k in TIMING], [c.pop(
            "seconds", None) for c in s.get("curve", [])]
    assert a == b
    weights = [torch.load(d / "checkpoints" / "last.pt", weights_only=True) for d in (
        out, straight)]
    # finetune, tbptt: "model"
    model = {"gallery.gan": "g", "gallery.simsiam": "encoder"}.get(module, "model")
    for key, tensor in weights[0][model].items():
        assert torch.equal(tensor, weights[1][model][key]), key


def test_dqn_resume_restores_the_buffer_and_counters_of_the_checkpoint(tmp_path):
    overrides = [f"out_dir={tmp_path}", "device=cpu", "steps=400", "learning_starts=100",
                 "eval_every=200", "eval_episodes=1", "hidden=16", "batch_size=32",
                 "stop_when_solved=false"]
    dqn.train(compose("dqn", overrides))
    saved = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    restored = {}
    real_update = dqn.update

    # the first update after the resume sees the restored state
    def spy(online, target, optimizer, batch, *a):
        if not restored:
            # a copy: Adam counts in place
            restored.update(adam_steps=float(optimizer.state_dict()["state"][0]["step"]))
        return real_update(online, target, optimizer, batch, *a)

    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(dqn.BY_MISTAKE, "none", dqn.BY_MISTAKE["none"]._replace(update=spy))
        summary = dqn.train(compose("dqn", [*overrides, "steps=600", "resume=true"]))
    assert saved["step"] == 400 and saved["buffer"]["size"] == 400
    # Adam's step count came back with the optimizer
    assert restored["adam_steps"] == saved["tally"]["updates"]
    assert summary["env_steps"] == 600 and summary["updates"] == saved["tally"]["updates"] + 100
    assert [e["env_steps"] for e in summary["evals"]] == [200, 400, 600]


@pytest.mark.parametrize("module, override, expected", [
    ("gallery.gan", "setps=5", "'setps' is not a config key of gan; did you mean 'steps'?"),
    ("gallery.gan", "seed=abc", "seed=abc: Value 'abc' of type 'str' could not be converted to "
                                "Integer"),
    ("gallery.gan", "data=ring9", "data=ring9 is not a data option of gan; choose from: cifar10, "
                                  "digits, fake, "),
    ("gallery.gan", "data.nme=x", "did you mean 'data.name'?"),
    ("gallery.gan", "lr_g", "cannot read the override 'lr_g'"),
    ("gallery.gan", "+foo=1", "config key 'foo' is not in the schema GanConfig"),
    ("gallery.gan", "mistake=typo", "mistake='typo' is not one of: none, no_detach,"),
    ("gallery.gan", "lr_d=0", "lr_d must be > 0, got 0.0"),
    ("gallery.gan", "threads=-1", "threads='-1' must be auto or a whole number from 1 to"),
    ("gallery.dqn", "gamma=1.5", "gamma must be in [0.0, 1.0], got 1.5"),
    ("gallery.dqn", "tau=0", "tau must be in [1e-06, 1.0], got 0.0"),
    ("gallery.dqn", "env.id=NoSuchEnv-v0", "env.id='NoSuchEnv-v0'"),
    ("gallery.tbptt", "bptt_len=0", "bptt_len must be > 0, got 0"),
    ("gallery.tbptt", "k2=100", "k2=100 must be a multiple of bptt_len=64"),
    ("gallery.finetune", "data.labels_per_class=0", "data.labels_per_class must be > 0, got 0"),
    ("gallery.finetune", "mistake=checkpoint_reentrant",
     "mistake=checkpoint_reentrant needs checkpoint=true and unfreeze_"),
    ("gallery.finetune", "backbone=resnet50", "backbone=resnet50 is not a backbone option of "
                                              "finetune; choose from: digits_cnn, resnet18"),
    ("gallery.gan", "data=file", "data=file is not a data option of gan; choose from: cifar10, "
                                 "digits, fake, "),
    ("gallery.tbptt", "data=ring8", "data=ring8 is not a data option of tbptt; choose from: file, "
                                    "pydoc, "),
    ("gallery.gan", "data.root=/nonexistent data=imagefolder",
     "data.root='/nonexistent' is not a directory"),
    ("gallery.tbptt", "data=file", "data=file needs data.path=/path/to/text.txt"),
    ("gallery.tbptt", "data=file data.path={tiny}",
     "has 226 characters; batch_size=32 streams of bptt_len=64"),
    ("gallery.tbptt", "data=file data.path={empty}", "has 0 characters"),
    ("gallery.tbptt", "data=file data.path={binary}", "is not UTF-8 text"),
    ("gallery.dqn", "env.id=Pendulum-v1", "DQN needs a Discrete one"),
    ("gallery.gan", "data=imagefolder data.root={images}",
     "Found no valid file for the classes cls"),
    ("gallery.ppo", "minibatch_size=512", "minibatch_size=512 is more than a rollout holds "
                                          "(rollout_steps * env.num_envs = 256)"),
    ("gallery.ppo", "env.id=Pendulum-v1", "PPO needs a Discrete one"),
    ("gallery.sac", "tau=0", "tau must be in [1e-06, 1.0], got 0.0"),
    ("gallery.sac", "env.id=CartPole-v1", "SAC needs a Box one"),
    ("gallery.simsiam", "data=ring8", "data=ring8 is not a data option of simsiam; choose from: "
                                      "cifar10, digits, imag"),
    ("gallery.simsiam", "batch_size=1",
     "batch_size=1: BatchNorm needs at least 2 images per batch"),
    ("gallery.simsiam", "data.crop_scale=0", "data.crop_scale must be in [0.1, 1.0], got 0.0"),
    ("gallery.simsiam", "knn_k=5000", "knn_k=5000: the kNN bank holds only 1258 images"),
    ("gallery.simsiam", "data=imagefolder data.root={images}",
     "Found no valid file for the classes cls"),
    # NaN passed `> 0` checks before
    ("gallery.dqn", "lr=nan", "lr must be a finite number, got nan"),
    ("gallery.gan", "lr_d=nan", "lr_d must be a finite number, got nan"),
    ("gallery.ppo", "lr=inf", "lr must be a finite number, got inf"),
    ("gallery.sac", "gamma=-inf", "gamma must be a finite number, got -inf"),
    ("gallery.tbptt", "lr=nan", "lr must be a finite number, got nan"),
    ("gallery.simsiam", "lr=nan", "lr must be a finite number, got nan"),
    ("gallery.finetune", "lr=nan", "lr must be a finite number, got nan"),
    # an interpolation that fails, or resolves to the wrong type; a thread count past a C int
    ("gallery.dqn", "lr=${{oc.env:HOME}}", "lr: While dereferencing interpolation"),
    ("gallery.vqvae", "beta=${{no_such_key}}", "beta: Interpolation key 'no_such_key' not found"),
    ("gallery.dqn", "threads=1240616054141", "must be auto or a whole number from 1 to 4096"),
    ("gallery.gan", "device=gpu", "device='gpu' is not a device"),
    ("gallery.gan", "steps=0", "steps must be > 0, got 0"),
    ("gallery.gan", "batch_size=-2", "batch_size must be > 0"),
    ("gallery.gan", "lr_gen=0.1", "'lr_gen' is not a config key of gan"),
    ("gallery.gan", "steps=ten", "steps=ten: Value 'ten' of type 'str' could not be converted to "
                                 "Integer"),
    pytest.param("gallery.gan", "device=cuda", "CUDA is not available", marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="this machine has CUDA")),
])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, module, override, expected):
    """In this process, through the same entry point as `python -m`; one real process for each kind
    of failure follows below."""
    device = [] if override.startswith("device=") else ["device=cpu"]
    proc = run_here(module, *bad_input(tmp_path, override), *device)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module, override, expected", [
    # Hydra's override error
    ("gallery.gan", "setps=5", "'setps' is not a config key of gan; did you mean 'steps'?"),
    # the schema's value check
    ("gallery.dqn", "gamma=1.5", "gamma must be in [0.0, 1.0], got 1.5"),
    # a bad data file, found at run time
    ("gallery.tbptt", "data=file data.path={binary}", "is not UTF-8 text"),
])
def test_bad_input_in_a_real_process_is_one_line_exit_2_and_leaves_nothing(
        tmp_path, module, override, expected):
    proc = cli(module, *bad_input(tmp_path, override), "device=cpu")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert expected in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_refused_run_leaves_an_empty_out_dir_that_was_already_there(tmp_path):
    """The folders a refused run removes are the ones it made: an out_dir made beforehand (empty)
    stays."""
    (tmp_path / "run").mkdir()
    proc = run_here("gallery.dqn", *bad_input(tmp_path, "env.vectorization=7732"), "device=cpu")
    assert proc.returncode == 2 and "env.vectorization='7732' is not one of" in proc.stderr
    assert (tmp_path / "run").is_dir()


def bad_input(tmp_path: Path, override: str) -> list[str]:
    """The override's words with its {files} filled in, and out_dir=<tmp_path>/run."""
    files = {"tiny": tmp_path / "tiny.txt", "empty": tmp_path / "empty.txt",
             "binary": tmp_path / "binary.txt"}
    files["tiny"].write_text("x" * 225 + "\n")
    files["empty"].write_text("")
    files["binary"].write_bytes(bytes(range(256)) * 8)
    files["images"] = tmp_path / "images"
    (files["images"] / "cls").mkdir(parents=True)  # an image folder with a class and no images
    return [*override.format(**files).split(), f"out_dir={tmp_path / 'run'}"]


def test_a_nan_loss_stops_the_run_keeps_the_last_good_checkpoint_and_says_diverged(
        tmp_path, monkeypatch):
    from gallery import gan
    from gallery.core.errors import Diverged

    calls = {"n": 0}
    real = gan.g_loss_fn

    def turns_nan(fake_logits):  # an injected NaN from step 30 on
        calls["n"] += 1
        return real(fake_logits) * (float("nan") if calls["n"] >= 30 else 1.0)

    monkeypatch.setattr(gan, "g_loss_fn", turns_nan)
    cfg = compose("gan", [*GAN, "steps=60", "log_every=10", "ckpt_every=20", f"out_dir={tmp_path}"])
    with pytest.raises(Diverged, match="diverged at step 30: g_loss=nan"):
        gan.train(cfg)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "diverged" and "step 30" in summary["error"]
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["step"] == 20


def test_a_learning_rate_that_diverges_exits_3_with_one_line(tmp_path):
    proc = run_here("gallery.gan", *GAN, "steps=40", "log_every=10", "lr_g=1e30", "lr_d=1e30",
                    f"out_dir={tmp_path}")
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "diverged at step" in proc.stderr and "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "diverged"
    # it diverged before the first checkpoint: the line points at none
    assert "no checkpoint was saved yet" in proc.stderr and "last good" not in proc.stderr
    # the line names the example's own step sizes (EXAMPLE.lr_keys), with their values
    assert "(try a smaller lr_d=1e+30 or lr_g=1e+30)" in proc.stderr, proc.stderr


def test_maml_diverging_names_its_inner_step_size(tmp_path):
    from gallery import maml

    proc = run_here("gallery.maml", *maml.EXAMPLE.smoke, "inner_lr=1e6", f"out_dir={tmp_path}")
    assert proc.returncode == 3 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "(try a smaller inner_lr=1000000.0 or lr=0.001)" in proc.stderr, proc.stderr


# What each example's summary must hold, and the headline its command line prints.
SUMMARY_KEYS = {
    "gallery.gan": ("modes_covered", "high_quality_frac", "g_grad_norm_after_d_step",
                    "sec_per_step", "steps"),
    "gallery.dqn": ("eval_return_mean", "eval_return_std", "env_steps", "first_solved_step",
                    "target_grad_seen", "env_steps_per_sec"),
    "gallery.finetune": ("val_acc", "backbone_unchanged", "trainable_params", "frozen_params",
                         "sec_per_step", "saved_bytes_per_step"),
    "gallery.tbptt": ("val_bpc", "chars_per_sec", "saved_bytes_per_chunk", "steps"),
    "gallery.simsiam": ("knn_acc", "output_std_sqrt_d", "target_branch_grad_share"),
    "gallery.ppo": ("eval_return_mean", "rollout_saved_bytes", "env_steps"),
    "gallery.sac": ("eval_return_mean", "target_grad_seen", "updates", "saved_bytes_per_update"),
}


@pytest.mark.parametrize("module, args", [
    ("gallery.gan", [*GAN, "steps=60", "log_every=10", "eval_every=60"]),
    ("gallery.dqn", ["steps=400", "learning_starts=100", "eval_every=200", "eval_episodes=2",
                     "hidden=16", "log_every=100", "device=cpu"]),
    ("gallery.finetune", ["steps=20", "log_every=5", "eval_every=10", "device=cpu"]),
    ("gallery.tbptt", [*TBPTT, "steps=60", "eval_every=60"]),
    ("gallery.simsiam", ["steps=20", "eval_every=10", "log_every=5", "batch_size=32",
                         "device=cpu"]),
    ("gallery.ppo", ["steps=1024", "eval_every=512", "log_every=256", "eval_episodes=2",
                     "value_check_episodes=1", "stop_when_solved=false", "device=cpu"]),
    ("gallery.sac", ["steps=300", "learning_starts=100", "eval_every=150", "eval_episodes=1",
                     "hidden=16", "batch_size=32", "log_every=100", "probe_every=10",
                     "device=cpu"]),
])
def test_the_same_seed_gives_the_same_metrics_in_two_processes(
        tmp_path, module, args, pretrained_backbone):
    """One run in this process, the other in a fresh process (its own hash seed, its own import
    order): the same rows. Each also writes its summary, the resolved config and the command line's
    headline."""
    if module == "gallery.finetune":
        args = [*args, f"backbone.checkpoint_dir={pretrained_backbone}"]
    here = run_here(module, *args, "seed=7", f"out_dir={tmp_path / 'a'}")
    there = cli(module, *args, "seed=7", f"out_dir={tmp_path / 'b'}")
    for proc in (here, there):
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert rows(tmp_path / "a" / "metrics.jsonl") == rows(tmp_path / "b" / "metrics.jsonl")
    assert len(rows(tmp_path / "a" / "metrics.jsonl")) >= 2
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["example"] == module.split(".")[1] and summary["seed"] == 7
    missing = [key for key in SUMMARY_KEYS[module] if key not in summary]
    assert not missing, missing
    assert f"{SUMMARY_KEYS[module][0]}=" in here.stdout
    assert f"outputs: {tmp_path / 'a'}" in here.stdout
    assert (tmp_path / "a" / ".hydra" / "config.yaml").is_file()
    if module == "gallery.ppo":
        assert summary["rollout_saved_bytes"] == 0
        assert (tmp_path / "a" / "learning_curve.png").is_file()
    if module == "gallery.sac":
        assert summary["target_grad_seen"] is False and summary["updates"] == 200
        assert summary["saved_bytes_per_update"] > 0


@pytest.mark.parametrize("module, args", [
    ("gallery.gan", [*GAN, "steps=20", "eval_every=20"]),
    ("gallery.dqn", ["steps=300", "learning_starts=100", "eval_every=300", "eval_episodes=1",
                     "hidden=16", "device=cpu"]),
    ("gallery.finetune", ["steps=10", "eval_every=10", "device=cpu"]),
    ("gallery.tbptt", [*TBPTT, "steps=10", "eval_every=10"]),
    ("gallery.simsiam", ["steps=4", "eval_every=4", "batch_size=32", "device=cpu"]),
    ("gallery.ppo", ["steps=256", "eval_every=256", "eval_episodes=1", "value_check_episodes=1",
                     "device=cpu"]),
    ("gallery.sac", ["steps=200", "learning_starts=100", "eval_every=200", "eval_episodes=1",
                     "hidden=16", "batch_size=32", "device=cpu"]),
])
def test_deterministic_true_runs_every_example_in_strict_mode_and_says_what_it_costs(
        tmp_path, module, args, pretrained_backbone):
    if module == "gallery.finetune":
        args = [*args, f"backbone.checkpoint_dir={pretrained_backbone}"]
    seen = []
    real = torch.use_deterministic_algorithms

    # strict mode is switched on for the run (then run_here switches it off)
    def spy(mode, **kwargs):
        seen.append(mode)
        return real(mode, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "use_deterministic_algorithms", spy)
        proc = run_here(module, *args, "deterministic=true", f"out_dir={tmp_path / 'run'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "deterministic=true: deterministic kernels only" in proc.stderr and seen[0] is True


def test_the_pretrained_backbone_is_cached_once_for_runs_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("GALLERY_CACHE", str(tmp_path / "cache"))
    args = ["steps=5", "eval_every=5", "backbone.pretrain_steps=20", "device=cpu"]
    first = run_here("gallery.finetune", *args, f"out_dir={tmp_path / 'a'}")
    monkeypatch.chdir(tmp_path)
    elsewhere = run_here("gallery.finetune", *args, f"out_dir={tmp_path / 'b'}")
    assert first.returncode == 0 and elsewhere.returncode == 0, elsewhere.stderr[-2000:]
    assert "pretraining digits_cnn" in first.stdout
    assert "pretraining digits_cnn" not in elsewhere.stdout
    assert (tmp_path / "cache" / "digits_cnn-seed0-steps20" / "last.pt").is_file()
    assert not (tmp_path / "data_cache").exists()


@pytest.fixture
def silent_server():
    """A local server that accepts connections and never answers: a download that hangs."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_download_that_hangs_fails_within_the_timeout_naming_the_file(
        tmp_path, monkeypatch, silent_server):
    from gallery.core.errors import DataError
    from gallery.data import text

    monkeypatch.setenv("GALLERY_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setitem(text.ONLINE, "tiny_shakespeare",
                        {**text.ONLINE["tiny_shakespeare"], "url": f"{silent_server}/input.txt"})
    start = time.perf_counter()
    with pytest.raises(DataError, match=r"could not download tiny_shakespeare "
                                        r".*tiny_shakespeare.txt.*data=pydoc"):
        text.load_text("tiny_shakespeare", root=str(tmp_path))
    assert time.perf_counter() - start < 30  # the timeout, not a wait forever
    assert not list(tmp_path.iterdir())  # no partial file left


def test_an_image_download_that_hangs_fails_within_the_timeout(
        tmp_path, monkeypatch, silent_server):
    import torchvision

    from gallery.core.errors import DataError
    from gallery.data import images

    monkeypatch.setenv("GALLERY_DOWNLOAD_TIMEOUT", "1")
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"{silent_server}/"])
    start = time.perf_counter()
    with pytest.raises(DataError, match="could not download or verify mnist.*data=digits"):
        images.torchvision_dataset("mnist", str(tmp_path), None)
    assert time.perf_counter() - start < 60
    assert not (tmp_path / "MNIST").exists()


def test_resume_from_a_path_starts_a_new_run_there_and_a_foreign_checkpoint_is_refused(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert run_here("gallery.gan", *GAN, "steps=40", "ckpt_every=20",
                    f"out_dir={first}").returncode == 0
    proc = run_here("gallery.gan", *GAN, "steps=60", f"out_dir={second}",
                    f"resume={first}/checkpoints/last.pt")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # log_every=20: 60 only
    assert [r["step"] for r in rows(second / "metrics.jsonl") if "d_loss" in r] == [60]
    assert json.loads((second / "summary.json").read_text())["steps"] == 60
    tbptt_run = tmp_path / "tbptt"
    assert run_here("gallery.tbptt", *TBPTT, "steps=4", "eval_every=4",
                    f"out_dir={tbptt_run}").returncode == 0
    foreign = run_here("gallery.gan", *GAN, f"out_dir={tmp_path / 'third'}",
                       f"resume={tbptt_run}/checkpoints/last.pt")
    assert foreign.returncode == 2 and "was written by tbptt, not gan" in foreign.stderr
    assert len(foreign.stderr.strip().splitlines()) == 1 and not (tmp_path / "third").exists()


def test_the_exit_statuses_are_the_documented_table():
    import re

    from gallery.core.errors import EXIT_STATUS

    table = re.findall(r"^\| (\d+) \| `(\w+)` \|", (ROOT / "docs" / "exit-status.md").read_text(),
                       flags=re.M)
    assert {name: int(code) for code, name in table} == EXIT_STATUS


def test_an_out_dir_that_cannot_be_made_or_written_is_one_line_exit_2_before_anything_runs(
        tmp_path, monkeypatch):
    afile = tmp_path / "afile"
    afile.write_text("")
    proc = run_here("gallery.gan", f"out_dir={afile}/run", "device=cpu")
    assert proc.returncode == 2 and proc.stderr == (f"error: out_dir={afile}/run: cannot be made, "
                                                    f"{afile} is a file\n")
    import tempfile

    real = tempfile.TemporaryFile  # root may write anywhere: the refusal of a write is stubbed

    def refused(*args, dir=None, **kwargs):
        if str(dir).startswith(str(tmp_path / "new")):
            raise PermissionError(13, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", refused)
    proc = run_here("gallery.gan", f"out_dir={tmp_path}/new/run", "device=cpu")
    assert proc.returncode == 2 and proc.stderr == (
        f"error: out_dir={tmp_path}/new/run: cannot be made or written, permission denied\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_out_of_memory_is_one_line_exit_4_naming_the_batch_size_and_leaves_nothing(tmp_path):
    """A batch of 10^12 points asks the CPU allocator for terabytes: it refuses at once."""
    from gallery.core.errors import EXIT_STATUS

    out = tmp_path / "run"
    proc = run_here("gallery.gan", *GAN, "batch_size=1000000000000", f"out_dir={out}")
    assert proc.returncode == EXIT_STATUS["out_of_memory"] == 4, proc.stderr[-2000:]
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    expected = "out of memory (the CPU allocator) at batch_size=1000000000000: lower batch_size"
    assert expected in proc.stderr
    assert "nothing was kept" in proc.stderr and not out.exists()


def test_out_of_memory_after_a_checkpoint_keeps_it_and_says_how_to_resume(tmp_path, monkeypatch):
    from gallery import gan

    calls = {"n": 0}
    real = gan.g_loss_fn

    def runs_out(fake_logits):  # CUDA's error, raised at step 30 (after the checkpoint at step 20)
        calls["n"] += 1
        if calls["n"] == 30:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(fake_logits)

    monkeypatch.setattr(gan, "g_loss_fn", runs_out)
    out = tmp_path / "run"
    proc = run_here("gallery.gan", *GAN, "steps=60", "ckpt_every=20", f"out_dir={out}")
    assert proc.returncode == 4 and proc.stderr.count("\n") == 1, proc.stderr[-2000:]
    assert "out of memory (CUDA) at batch_size=" in proc.stderr
    assert f"{out} keeps its last checkpoint (resume=true continues it)" in proc.stderr
    assert torch.load(out / "checkpoints" / "last.pt", weights_only=True)["step"] == 20


# Their data streams (prompts, tasks, micro-batches) come from generators of their own, which must
# ride in the checkpoint: a resume that restarted them would train on other data than the
# straight run.
@pytest.mark.parametrize("name, steps", [("grpo", 8), ("maml", 20), ("accumulate", 10)])
def test_a_resumed_run_trains_on_the_same_data_and_ends_where_the_straight_run_does(
        tmp_path, name, steps):
    module = importlib.import_module(f"gallery.{name}")
    args = [*module.EXAMPLE.smoke, "device=cpu", f"steps={steps}", f"ckpt_every={steps // 2}",
            f"log_every={steps // 4}", f"eval_every={steps // 2}"]
    straight = module.train(compose(name, [*args, f"out_dir={tmp_path}/a"]))
    module.train(compose(name, [*args, f"steps={steps // 2}", f"out_dir={tmp_path}/b"]))
    resumed = module.train(compose(name, [*args, f"out_dir={tmp_path}/b", "resume=true"]))
    assert rows(tmp_path / "b" / "metrics.jsonl") == rows(tmp_path / "a" / "metrics.jsonl")
    speed = {"steps_per_sec", "meta_iterations_per_sec", "out_dir", "curve", *TIMING}
    assert resumed.pop("resumed_with") == {"steps": [steps // 2, steps]}  # said, not hidden
    assert ({k: v for k, v in resumed.items() if k not in speed}
            == {k: v for k, v in straight.items() if k not in speed})


def test_resume_from_a_checkpoint_of_another_shape_names_the_keys_and_writes_nothing(tmp_path):
    assert run_here("gallery.gan", *GAN, "steps=20", f"out_dir={tmp_path}/a").returncode == 0
    other = tmp_path / "a" / "checkpoints" / "last.pt"
    proc = run_here("gallery.gan", *GAN, "steps=40", "hidden=32", f"resume={other}",
                    f"out_dir={tmp_path}/b")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "does not fit this gan run: hidden=16 there, 32 here" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "b").exists()
    # the same shape goes on from it
    assert run_here("gallery.gan", *GAN, "steps=40", f"resume={other}",
                    f"out_dir={tmp_path}/b").returncode == 0


def test_out_of_memory_names_the_examples_own_size_keys(tmp_path):
    """accumulate has no batch_size: the line names micro_batch_size and max_len instead."""
    out = tmp_path / "run"
    smoke = importlib.import_module("gallery.accumulate").EXAMPLE.smoke
    proc = run_here("gallery.accumulate", *smoke, "device=cpu", "micro_batch_size=1000000000000",
                    f"out_dir={out}")
    assert proc.returncode == 4, proc.stderr[-2000:]
    assert "at micro_batch_size=1000000000000, max_len=" in proc.stderr
    assert "batch_size=None" not in proc.stderr and not out.exists()
