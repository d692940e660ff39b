import json
import os
import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError
from torch import nn

from gallery.core import CheckpointError, ConfigError, DeviceError, GalleryError
from gallery.core.checkpoint import LAST, PREVIOUS, load_checkpoint, save_checkpoint
from gallery.core.cli import compose, run_cli
from gallery.core.config import BaseConfig, register_schema, require_range, to_schema, validate_base
from gallery.core.device import amp_forward, compile_modules, fused, resolve_device, set_threads
from gallery.core.errors import DataError
from gallery.core.registry import Example, Mistake, examples
from gallery.core.run import Run, progress, read_metrics
from gallery.core.seeding import rng_state, seed_everything, set_rng_state
from tests.conftest import ROOT


@register_schema("toy")
@dataclass
class ToyConfig(BaseConfig):
    lr: float = 1e-3

TOY_DIR = ROOT / "tests" / "configs"


# --- device -----------------------------------------------------------------------------------

def test_cpu_and_auto_resolve():
    assert resolve_device("cpu") == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_cuda_without_cuda_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="device=cuda.*CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", "tpu", ""])
def test_unknown_device_string_names_the_choices(bad):
    with pytest.raises(DeviceError, match="auto, cpu, cuda, cuda:N, mps"):
        resolve_device(bad)


def test_amp_is_bf16_where_the_gpu_has_it_and_float32_otherwise_never_unscaled_fp16(monkeypatch):
    """The capability flag decides (patched here: no GPU is needed to check the choice). Without
    bf16 the module is left in float32: fp16 would need a GradScaler inside every pattern
    function."""
    from gallery.core.device import amp_dtype

    cuda = torch.device("cuda", 0)
    for has_bf16, dtype in ((True, torch.bfloat16), (False, None)):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, has=has_bf16, **k: has)
        assert amp_dtype(cuda) == dtype and amp_dtype(torch.device("cpu")) is None
        net = nn.Linear(2, 2)
        forward = net.forward
        assert (amp_forward(net, cuda).forward == forward) is (dtype is None)
        untouched = nn.Linear(2, 2)
        plain = untouched.forward
        # amp=false: float32 as written
        assert amp_forward(untouched, cuda, enabled=False).forward == plain


def test_amp_forward_leaves_a_cpu_module_untouched():
    net = nn.Linear(2, 2)
    forward = net.forward
    assert amp_forward(net, torch.device("cpu")) is net and net.forward == forward
    assert net(torch.ones(1, 2)).dtype == torch.float32


def test_threads_auto_is_one_for_single_threads_and_a_number_sets_it():
    before = torch.get_num_threads()
    try:
        assert set_threads("auto", torch.device("cpu"), single_thread=True) == 1
        assert set_threads("2", torch.device("cpu"), single_thread=True) == 2
        assert set_threads(1, torch.device("cpu"), single_thread=False) == 1
        # a sweep's jobs share the cores: one thread each when there are as many jobs
        cores = os.cpu_count() or 1
        assert set_threads("auto", torch.device("cpu"), single_thread=False, jobs=cores) == 1
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("bad", ["0", "-1", "many", "1.5"])
def test_threads_must_be_auto_or_a_positive_count(bad):
    with pytest.raises(ConfigError, match="threads=.*auto or a whole number from 1 to"):
        validate_base(BaseConfig(threads=bad), [])


# --- seeding ----------------------------------------------------------------------------------

def _draw():
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_seed_zero_is_a_valid_seed_and_repeats():
    seed_everything(0)
    first = _draw()
    seed_everything(0)
    assert _draw() == first
    seed_everything(1)
    assert _draw() != first


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    seed_everything(3)
    save_checkpoint(tmp_path, {"rng": rng_state()})
    expected = _draw()
    set_rng_state(load_checkpoint(tmp_path / LAST)["rng"])
    assert _draw() == expected


# --- config -----------------------------------------------------------------------------------

def test_schema_types_the_yaml():
    cfg = to_schema(compose("toy", ["seed=0", "lr=0.5"], TOY_DIR))
    assert isinstance(cfg, ToyConfig) and cfg.steps == 5 and cfg.seed == 0 and cfg.lr == 0.5


def test_unknown_key_fails_before_anything_runs():
    with pytest.raises(ConfigCompositionException) as info:
        compose("toy", ["lerning_rate=0.1"], TOY_DIR)
    assert "lerning_rate" in str(info.value) + str(info.value.__cause__)


def test_wrong_type_fails_naming_the_key():
    with pytest.raises((ConfigCompositionException, ValidationError)) as info:
        compose("toy", ["steps=many"], TOY_DIR)
    assert "steps" in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("key", ["steps", "log_every", "eval_every"])
@pytest.mark.parametrize("value", [0, -3])
def test_non_positive_values_are_rejected_by_name(key, value):
    cfg = ToyConfig(**{key: value})
    with pytest.raises(ConfigError, match=f"{key} must be > 0, got {value}"):
        validate_base(cfg, mistakes=[])


def test_negative_seed_and_unknown_mistake_are_rejected():
    with pytest.raises(ConfigError, match="seed must be >= 0"):
        validate_base(ToyConfig(seed=-1), mistakes=[])
    with pytest.raises(ConfigError, match="mistake='typo' is not one of: none, a, b"):
        validate_base(ToyConfig(mistake="typo"), mistakes=["a", "b"])
    with pytest.raises(ConfigError, match=r"lr must be in \[0, 1\], got 2"):
        require_range(ToyConfig(lr=2), "lr", 0, 1)


def test_key_added_with_plus_is_still_rejected_by_the_schema():
    cfg = compose("toy", ["+device_id=3"], TOY_DIR)  # Hydra lets `+key` through
    with pytest.raises(ConfigError, match="device_id"):
        to_schema(cfg)


def test_run_cli_turns_gallery_errors_into_exit_2(capsys):
    def train(_cfg):
        raise DeviceError("device=cuda was asked for, but CUDA is not available")

    with pytest.raises(SystemExit) as info:
        run_cli(train, None)
    assert info.value.code == 2
    assert "error: device=cuda" in capsys.readouterr().err


# --- run dir, metrics, summary ----------------------------------------------------------------

def test_run_writes_config_metrics_and_summary(tmp_path):
    cfg = compose("toy", [], TOY_DIR)
    with Run(tmp_path / "run", config=cfg) as run:
        run.log(1, loss=0.5)
        run.log(2, loss=float("nan"), sample=torch.tensor(3.0))
        summary = run.write_summary({"acc": np.float32(0.25), "curve": [1.0, float("inf")]})
    assert (tmp_path / "run" / ".hydra" / "config.yaml").read_text().count("steps: 5") == 1
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": None, "sample": 3.0}]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    assert summary.pop("wall_seconds") >= 0  # the time since the Run opened, in every summary
    assert summary == {"status": "finished", "acc": 0.25, "curve": [1.0, None],
                       "out_dir": str(tmp_path / "run"), "threads": torch.get_num_threads()}
    assert not list((tmp_path / "run").glob(".*.tmp"))
    # readable by the group, as any file
    assert (tmp_path / "run" / "summary.json").stat().st_mode & 0o044


def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with Run(tmp_path / "rank1") as run:
        run.log(1, loss=1.0)
        run.write_summary({"x": 1})
    assert not (tmp_path / "rank1").exists()


def test_progress_bar_is_off_when_not_a_terminal():
    assert progress(10, "x").disable  # pytest captures stderr: not a terminal
    assert not progress(10, "x", enabled=True).disable


# --- checkpoint -------------------------------------------------------------------------------

def _state(step):
    net = nn.Linear(2, 2)
    return {"model": net.state_dict(), "step": step, "note": "plain", "ints": [1, 2]}


def test_checkpoint_keeps_last_and_previous(tmp_path):
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    assert load_checkpoint(tmp_path / LAST)["step"] == 2
    assert load_checkpoint(tmp_path / PREVIOUS)["step"] == 1
    save_checkpoint(tmp_path, _state(3))
    assert load_checkpoint(tmp_path / PREVIOUS)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST, PREVIOUS]  # no temp files left


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path, _state(1))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_text_file_is_not_a_checkpoint_and_gets_no_advice_to_unpickle_it(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("garbage\n")
    with pytest.raises(CheckpointError, match="truncated or not a checkpoint") as info:
        load_checkpoint(path)
    assert "weights_only" not in str(info.value) and "previous" not in str(info.value)


def test_resume_falls_back_to_previous_when_last_is_damaged(tmp_path, capsys):
    from gallery.core.checkpoint import load_latest

    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    (tmp_path / LAST).write_bytes((tmp_path / LAST).read_bytes()[:100])
    assert load_latest(tmp_path)["step"] == 1
    err = capsys.readouterr().err
    assert str(tmp_path / LAST) in err and str(tmp_path / PREVIOUS) in err
    (tmp_path / PREVIOUS).write_text("garbage")
    with pytest.raises(CheckpointError, match="neither checkpoint can be used"):
        load_latest(tmp_path)


def test_a_failed_checkpoint_write_keeps_the_last_one_and_says_so(tmp_path, monkeypatch):
    import errno
    import os

    save_checkpoint(tmp_path, _state(1))

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(CheckpointError, match="No space left on device.*last.pt is as it was"):
        save_checkpoint(tmp_path, _state(2))
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / LAST)["step"] == 1
    # no temp file, no half-written previous.pt
    assert sorted(p.name for p in tmp_path.iterdir()) == [LAST]


def test_foreign_torch_file_is_not_a_gallery_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match="not a detach-gallery checkpoint"):
        load_checkpoint(path)


def test_missing_checkpoint_names_the_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


class NotPlainData:
    def __init__(self):
        self.payload = "arbitrary object"


def test_pickled_object_is_refused_by_weights_only(tmp_path):
    save_checkpoint(tmp_path, {"model": {}, "extra": NotPlainData()})
    with pytest.raises(CheckpointError, match="not plain data"):
        load_checkpoint(tmp_path / LAST)


@pytest.mark.parametrize("cls", [CheckpointError, ConfigError, DeviceError, DataError])
def test_every_user_error_is_one_line_and_exit_2_on_the_command_line(cls, capsys):
    from omegaconf import OmegaConf


    def train(cfg):
        raise cls(f"{cls.__name__} says what to fix")

    with pytest.raises(SystemExit) as stop:
        run_cli(train, OmegaConf.create({}))
    assert stop.value.code == 2 and issubclass(cls, GalleryError)
    assert capsys.readouterr().err == f"error: {cls.__name__} says what to fix\n"


# --- registry ---------------------------------------------------------------------------------

def test_example_describe_lists_every_mistake_with_its_consequence():
    ex = Example("toy", "cut the graph", (), {"oops": Mistake("forgot to cut", "it breaks")})
    text = ex.describe()
    assert "toy: cut the graph" in text and "oops: forgot to cut" in text and "-> it breaks" in text


def test_registry_lists_only_modules_that_exist():
    found = examples()
    for name in found:
        assert (ROOT / "gallery" / f"{name}.py").is_file()
    assert "tour" not in found


def test_lr_schedules():
    from gallery.core.schedule import lr_schedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = lr_schedule(opt, "linear", 4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == [1.0, 0.75, 0.5, 0.25] and opt.param_groups[0]["lr"] == 0.0
    assert lr_schedule(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), "constant",
                       4).get_last_lr() == [0.1]
    two = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)]}], lr=1.0)
    cosine = lr_schedule(two, "cosine", 4, fixed_groups=(1,))
    for _ in range(2):
        two.step()
        cosine.step()
    assert [g["lr"] for g in two.param_groups] == [pytest.approx(0.5),
                                                   1.0]  # halfway; group 1 fixed
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr_schedule(opt, "step", 4)


def test_reraise_explained_only_for_the_known_error_of_that_mistake():
    from gallery.core.errors import ExplainedMistake, reraise_explained

    known = {"oops": ("second time", "explained: detach it")}
    err = RuntimeError("Trying to backward through the graph a second time")
    with pytest.raises(ExplainedMistake, match="explained: detach it") as info:
        reraise_explained(err, "oops", known)
    assert info.value.__cause__ is err
    assert reraise_explained(err, "none", known) is None  # the pattern never hides an error
    assert reraise_explained(RuntimeError("shape mismatch"), "oops", known) is None


def test_compile_replays_cuda_graphs_on_cuda_only_and_optimizers_fuse(monkeypatch):
    """compile=true asks torch.compile for CUDA graphs ("reduce-overhead") on a GPU, where a small
    net's step is launch-bound, and its default mode elsewhere; compile=false compiles nothing."""
    net, modes = nn.Linear(2, 2), []
    monkeypatch.setattr(net, "compile", lambda mode=None: modes.append(mode))
    compile_modules(True, net, device=torch.device("cuda"))
    compile_modules(True, net, device=torch.device("cpu"))
    compile_modules(True, net)
    compile_modules(False, net, device=torch.device("cuda"))
    assert modes == ["reduce-overhead", None, None]
    assert fused(torch.device("cpu")) and fused(torch.device("cuda"))
    assert not fused(torch.device("meta"))
    params = [nn.Parameter(torch.ones(3))]
    optimizer = torch.optim.Adam(params, lr=0.1, fused=fused(torch.device("cpu")))
    params[0].grad = torch.ones(3)
    optimizer.step()  # the fused CPU kernel runs on this torch
    assert torch.allclose(params[0].detach(), torch.full((3,), 0.9))


def test_chain_computes_what_sequential_does_bit_for_bit_with_the_same_keys():
    from gallery.nets import Chain

    torch.manual_seed(0)
    layers = [nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)]
    plain, chain = nn.Sequential(*layers), Chain(*layers)
    x = torch.randn(64, 4, requires_grad=True)
    assert torch.equal(chain(x), plain(x))
    assert list(chain.state_dict()) == list(plain.state_dict())
    (g_chain,) = torch.autograd.grad(chain(x).sum(), x)
    (g_plain,) = torch.autograd.grad(plain(x).sum(), x)
    assert torch.equal(g_chain, g_plain)
    seen = []
    chain.register_forward_hook(lambda *_: seen.append("whole"))
    chain(x)
    assert seen == ["whole"]  # a hook on the whole still fires


def test_hookless_keeps_the_copied_models_plain_and_the_trained_ones_the_same_net():
    from gallery import dqn, ppo, sac
    from gallery.nets import Chain, hookless

    # what a reader copies is plain torch
    assert type(dqn.q_network(4, 2, 8)) is nn.Sequential
    assert type(ppo.Agent(4, 2, 8).actor) is nn.Sequential
    assert type(sac.mlp(3, 1, 8)) is nn.Sequential
    torch.manual_seed(0)
    agent = ppo.Agent(4, 2, 8)
    keys, x = list(agent.state_dict()), torch.randn(5, 4)
    before = agent.actor(x)
    fast = hookless(agent)
    assert fast is agent and type(agent.actor) is Chain and type(agent.critic) is Chain
    assert list(agent.state_dict()) == keys and torch.equal(agent.actor(x), before)
    net = dqn.q_network(4, 2, 8)
    assert type(hookless(net)) is Chain and hookless(net)[0] is net[0]  # the same layers


def test_gallery_core_imports_at_the_top_except_documented_heavy_optional_packages():
    """Every arrow between modules shows in the imports at the top of a file; the exceptions are
    lazy imports of heavy optional packages, each with a comment on its line or the one above."""
    import ast

    heavy = ("matplotlib", "torchvision", "gymnasium", "torch.utils.tensorboard")
    found = []
    for path in sorted((ROOT / "gallery" / "core").glob("*.py")):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for inner in ast.walk(node):
                if isinstance(inner, (ast.Import, ast.ImportFrom)):
                    name = inner.module if isinstance(inner, ast.ImportFrom) else \
                        inner.names[0].name
                    said = "#" in lines[inner.lineno - 1] or "#" in lines[inner.lineno - 2]
                    found.append((path.name, name))
                    assert name.startswith(heavy) and said, f"{path.name}:{inner.lineno} {name}"
    assert found  # the walk saw the lazy imports it allows
