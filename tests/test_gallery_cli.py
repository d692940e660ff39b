import json

import pytest

from gallery.core.registry import examples
from tests.conftest import ROOT, run_here, smoke_args
from tests.test_registry import assert_declaration_holds


def test_listing_comes_from_the_registry():
    proc = run_here("gallery")
    assert proc.returncode == 0
    found = examples()
    # every example has its own config folder with its primary YAML, and every such folder an
    # example (configs/tour is the tour's)
    yamls = {d.name for d in (ROOT / "configs").iterdir() if (d / f"{d.name}.yaml").is_file()}
    assert set(found) == yamls - {"tour"}
    for name, example in found.items():
        assert f"{name:10s} {example.pattern}" in proc.stdout


def test_list_prints_every_mistake_and_its_consequence():
    proc = run_here("gallery", "list")
    assert proc.returncode == 0
    for example in examples().values():
        for key, mistake in example.mistakes.items():
            assert f"{key}: {mistake.description}" in proc.stdout
            assert mistake.consequence in proc.stdout


def test_unknown_command_exits_2():
    proc = run_here("gallery", "frobnicate")
    assert proc.returncode == 2 and "unknown command" in proc.stderr


def test_help_exits_0_with_usage():
    proc = run_here("gallery", "--help")
    assert proc.returncode == 0 and "show <example>" in proc.stdout


def test_every_example_mistake_is_a_config_choice_and_in_both_budgets():
    """The registry, each example's dispatch dict and its tour budgets agree on the mistake
    names."""
    for example in examples().values():
        assert set(example.module.BY_MISTAKE) == {"none", *example.mistakes}
        # a function, or a named structure: never a bare tuple
        for steps in example.module.BY_MISTAKE.values():
            assert callable(steps) or (isinstance(steps, tuple) and hasattr(
                steps, "_fields")), example.name
        for budget in ("quick", "full"):
            assert set(example.budgets[budget]) == {"none", *example.mistakes}


def test_show_prints_the_pattern_then_each_mistake_as_a_diff():
    for name, example in examples().items():
        proc = run_here("gallery", "show", name)
        assert proc.returncode == 0, proc.stderr
        for function in example.pattern_functions:
            assert f"def {function}(" in proc.stdout or f"class {function}(" in proc.stdout
        for key, mistake in example.mistakes.items():
            assert f"## mistake={key}: {mistake.description}" in proc.stdout
            for variant in mistake.variants:
                assert f"--- {variant} (mistake)" in proc.stdout
        assert "# MISTAKE:" in proc.stdout


def test_show_an_unknown_example_exits_2():
    proc = run_here("gallery", "show", "nosuch")
    assert proc.returncode == 2 and "the examples: " in proc.stderr


def test_quick_tour_runs_every_pattern_and_mistake(tmp_path):
    proc = run_here("gallery", "tour", "budget=quick", f"out_dir={tmp_path}", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "tour.json").read_text())
    report = (tmp_path / "report.md").read_text()
    for name, example in examples().items():
        assert (tmp_path / f"{name}.png").is_file()
        assert set(results[name]) == {"none", *example.mistakes}
        assert f"## {name}:" in report
    assert results["gan"]["no_detach"]["outcome"] == "raised"
    assert "backward through the graph a second time" in results["gan"]["no_detach"]["cause"]
    assert results["gan"]["reuse_d_output"]["outcome"] == "raised"
    assert results["tbptt"]["no_detach"]["outcome"] == "raised"
    assert results["dqn"]["target_grad"]["target_grad_seen"] is True
    assert results["finetune"]["bn_train"]["backbone_unchanged"] is False
    assert results["finetune"]["none"]["backbone_unchanged"] is True
    saved = results["tbptt"]["retain_graph"]["saved_bytes_per_chunk"]
    assert saved[-1][1] > saved[0][1]
    assert "```diff" in report and "# MISTAKE:" in report
    for name, example in examples().items():  # every mistake shows, or is refused for what
        pattern = example.headline(results[name]["none"])  # it needs (a setting, processes)
        for key, mistake in example.mistakes.items():
            run = results[name][key]
            shown = run["outcome"] in ("raised", "not run") or example.headline(run) != pattern
            assert shown or mistake.needs, f"{name} mistake={key} prints the pattern's line"
    assert "not run here: this mistake shows only with two processes" in report


def test_run_sh_rejects_an_unknown_example():
    import subprocess

    proc = subprocess.run(["bash", str(ROOT / "scripts" / "run.sh"), "nosuch"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no example named 'nosuch'" in proc.stderr


@pytest.mark.parametrize("name, groups", [(n, e.groups) for n, e in examples().items()],
                         ids=list(examples()))
def test_each_examples_help_lists_its_mistakes_and_only_its_own_config_groups(name, groups):
    proc = run_here(f"gallery.{name}", "--help")
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the pattern and every mistake, before Hydra's help
    assert proc.stdout.startswith(examples()[name].describe())
    if not groups:  # no empty section (maml)
        assert "== Configuration groups ==" not in proc.stdout
        return
    listed = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    lines = {line.split(": ", 1)[0]: line.split(": ",
                                                1)[1] for line in listed.splitlines()
             if ": " in line}
    assert lines == groups


def test_the_scripts_are_executable_and_run_on_the_project_venv_from_any_folder(tmp_path):
    import os
    import subprocess

    scripts = sorted((ROOT / "scripts").glob("*.py"))
    assert {s.name for s in scripts} >= {"bench.py", "gates.py", "sweep_report.py"}
    for script in scripts:
        assert os.access(script, os.X_OK), f"{script.name} is not executable"
        proc = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120,
                              env={k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"})
        assert proc.returncode == 0 and proc.stdout.startswith("usage: "), (
            script.name, proc.stderr[-1000:])


def test_an_example_runs_under_a_profiler_that_keeps_its_own_main(tmp_path):
    """`python -m cProfile -m gallery.dqn` runs the module under the name __main__ while
    sys.modules["__main__"] stays cProfile: the schema must still register, and the run finish."""
    import pstats
    import subprocess
    import sys

    stats = tmp_path / "dqn.prof"
    proc = subprocess.run(
        [sys.executable, "-m", "cProfile", "-o", str(stats), "-m", "gallery.dqn", "steps=300",
         "learning_starts=100", "eval_every=300", "eval_episodes=1", "progress=false",
         f"out_dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["env_steps"] == 300
    profiled = {func for (_, _, func) in pstats.Stats(str(stats)).stats}
    assert {"train", "update"} <= profiled


def test_the_command_line_composes_its_config_once_and_reaches_train_through_run_cli(
        tmp_path, monkeypatch):
    """One composition per process (it was two: a check of the overrides, then Hydra's own), and
    the path from `command_line` to `train` holds only `run_cli` of the project's frames."""
    import inspect

    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    from gallery import dqn

    real, composed, frames = ConfigLoaderImpl.load_configuration, [], []
    real_train = dqn.train

    def counted(self, *args, **kwargs):
        composed.append(kwargs.get("config_name", args[0] if args else None))
        return real(self, *args, **kwargs)

    def train(cfg):
        frames.extend(f.function for f in inspect.stack()
                      if "/gallery/" in f.filename and "/tests/" not in f.filename)
        return real_train(cfg)

    monkeypatch.setattr(ConfigLoaderImpl, "load_configuration", counted)
    monkeypatch.setattr(dqn, "train", train)
    proc = run_here("gallery.dqn", *dqn.EXAMPLE.smoke, f"out_dir={tmp_path}", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert composed == ["dqn"]
    assert frames[:2] == ["run_cli", "run_and_report"] and frames[-1] == "command_line"


def test_the_report_rounds_each_value_of_a_list(capsys):
    from gallery.core.cli import report

    report({"clip_fraction_per_pass": [0.0, 0.123456789, 0.5], "steps": 1200},
           "clip_fraction_per_pass", "steps")
    assert capsys.readouterr().out.strip() == "clip_fraction_per_pass=[0, 0.1235, 0.5] steps=1,200"


# Each example's own refusals, beside the door's (tests/test_fuzz.py): a value out of its range, an
# option of another example's group, a mistake it does not have.
@pytest.mark.parametrize("name,override,message", [
    ("a2c", "gae_lambda=1.5", "gae_lambda must be in [0.0, 1.0]"),
    ("a2c", "env.id=Pendulum-v1", "A2C needs a Discrete one"),
    ("a2c", "mistake=advantage_detach", "mistake"),
    ("distill", "alpha=1.5", "alpha must be in [0.0, 1.0]"),
    ("distill", "temperature=0", "temperature"),
    ("distill", "data=mnist", "data=mnist is not a data option of distill"),
    ("ema", "ema_decay=1.5", "ema_decay must be in [0.0, 1.0]"),
    ("ema", "data=mnist", "data=mnist is not a data option of ema"),
    ("evaluate", "dropout=0.95", "dropout must be in [0.0, 0.9]"),
    ("evaluate", "replay=-1", "replay"),
    ("evaluate", "mistake=no_eval", "mistake"),
    ("vqvae", "codebook_size=0", "codebook_size must be > 0"),
    ("vqvae", "data=ring8", "data=ring8 is not a data option of vqvae"),
    ("distill", "data=imagefolder", "data=imagefolder needs data.root=/path/to/images/"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, name, override, message):
    ran = run_here(f"gallery.{name}", override, f"out_dir={tmp_path}/run")
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", sorted(examples()))
def test_the_command_line_trains_and_prints_the_examples_report(tmp_path, name,
                                                                  pretrained_backbone):
    """Its smoke config through `python -m gallery.<name>` (in this process): exit 0, and each key
    of EXAMPLE.report that its summary holds a value for printed as key=value (a seconds-long run
    has no first_solved_step; finetune's pretraining stage reports keys of its own)."""
    example = examples()[name]
    ran = run_here(f"gallery.{name}", *smoke_args(example, tmp_path, pretrained_backbone),
                   "device=cpu", f"out_dir={tmp_path}/run")
    assert ran.returncode == 0, ran.stderr[-2000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    printed = [k for k in example.report if summary.get(k) is not None]
    assert printed and all(f"{k}=" in ran.stdout for k in printed), (printed, ran.stdout)
    if summary.get("stage") != "pretrain":
        assert_declaration_holds(example, summary, tmp_path)
