"""The command line, the one door of every example: `command_line(EXAMPLE, train)` composes the
config once, turns every user error into one line with exit status 2, runs `train` as a Hydra job
and prints the report. Also `--help`, and the one way every caller (tests, tour, scripts) composes
a config.

    python -m gallery.dqn lr=3e-4    ->  command_line  ->  run_cli  ->  dqn.train(cfg)

A sweep (`-m`) or any of Hydra's own flags goes through Hydra's own `hydra.main`, which composes
each job's config itself."""

from __future__ import annotations

import difflib
import functools
import gc
import inspect
import os
import re
import shlex
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import hydra
import torch
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks  # what hydra.main hands run_job (Hydra 1.3)
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import run_job
from hydra.errors import HydraException
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gallery.core import config as config_module
from gallery.core import dist
from gallery.core.config import config_dir as example_dir
from gallery.core.config import normalize_resume
from gallery.core.errors import (
    EXIT_STATUS,
    ConfigError,
    Diverged,
    ExplainedMistake,
    GalleryError,
    Interrupted,
    RunFault,
)
from gallery.core.io import missing_folders, remove_empty
from gallery.core.job import hydra_run_dir, multirun
from gallery.core.run import LOCK, Run


def compose(name: str, overrides: list[str] | tuple[str, ...] = (),
            config_dir: str | Path | None = None, hydra_config: bool = False) -> DictConfig:
    """The config `python -m gallery.<name> *overrides` would get, from configs/<name>/ (or
    `config_dir`); with `hydra_config`, Hydra's own node too (what a job needs). Inside a running
    Hydra job (the tour composes each example) that Hydra is set aside and put back."""
    outer = Singleton._instances.pop(GlobalHydra, None)
    try:
        with initialize_config_dir(version_base="1.3", job_name=name,
                                   config_dir=str(config_dir or example_dir(name))):
            return hydra_compose(config_name=name, overrides=list(overrides),
                                 return_hydra_config=hydra_config)
    finally:
        if outer is not None:
            Singleton._instances[GlobalHydra] = outer


def command_line(example: Any, train: Callable[[Any], dict], argv: list[str] | None = None) -> None:
    """`python -m gallery.<name> [k=v ...]`, the whole door: `--help` shows the pattern and its
    mistakes first; the config is composed once, and a bad override or out_dir is one line and
    exit status 2 before anything is written; then `train(cfg)` runs as a Hydra job (its run dir,
    its logging) under `run_cli`, and the example's report keys are printed. Sweeps (`-m`) and
    Hydra's flags go to `hydra.main`."""
    argv = sys.argv[1:] if argv is None else argv
    # torch, Hydra and the example live as long as the process: the collector, and exit, skip them
    gc.freeze()
    print_help_if_asked(example, argv)
    task = functools.partial(run_and_report, train, example.report)
    if any(arg.startswith("-") for arg in argv):
        hydra_main(example.name, task, argv)
        return
    cfg = composed_or_exit(example.name, argv)
    failed: list[Exception] = []

    def job(job_cfg: DictConfig) -> None:
        try:
            task(job_cfg)
        except Exception as err:  # a bug: raised again below, outside Hydra's job wrapper
            failed.append(err)

    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(),
                           callbacks=Callbacks(cfg))
    made = missing_folders(Path(cfg.hydra.run.dir).absolute())  # what Hydra is about to make
    try:
        run_job(hydra_context=context,
                task_function=job, config=cfg, job_dir_key="hydra.run.dir", job_subdir_key=None)
    except SystemExit as stop:
        if stop.code:  # refused or failed: the empty folders this run made go again
            remove_empty(made)
        raise
    if failed:
        raise failed[0]


def composed_or_exit(name: str, argv: list[str]) -> DictConfig:
    """The one composition of a run, Hydra's node included, with its out_dir checked; a Hydra
    error (a typo'd key, a wrong type, an unknown option) or an unusable out_dir is one line on
    stderr and exit status 2, like every other bad input. Hydra is left initialized for the job."""
    GlobalHydra.instance().clear()
    try:
        initialize_config_dir(version_base="1.3", job_name=name, config_dir=example_dir(name))
        cfg = hydra_compose(config_name=name, overrides=list(argv), return_hydra_config=True)
        check_out_dir(cfg.get("out_dir"))
    except (HydraException, OmegaConfBaseException) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        refuse(f"error: {explain_override_error(name, err)}")
    except GalleryError as err:
        refuse(f"error: {err}")
    return cfg


# How long a worker other than rank 0 waits, on bad input under torchrun, for rank 0's exit: when
# rank 0 fails, torchrun stops the others at once (it checks every 0.1 s by default).
PEER_WAIT_SECONDS = 20


def refuse(line: str) -> NoReturn:
    """Bad input: its one line on stderr, exit status 2. Under torchrun every worker finds the same
    bad input, and rank 0 alone says it: another rank waits for rank 0's exit, upon which torchrun
    stops it, so the line is never lost to a worker that exited first (torchrun then exits 1 with
    its own report, whose first failure is rank 0's status 2). A rank that is still running after
    the wait found something rank 0 did not, and says it."""
    if dist.rank() != 0 and dist.launched():
        # torchrun's SIGTERM ends the wait as an exit, so the empty folders this run made still go
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(EXIT_STATUS["bad_input"]))
        time.sleep(PEER_WAIT_SECONDS)
    print(line, file=sys.stderr, flush=True)
    sys.exit(EXIT_STATUS["bad_input"])


def hydra_main(name: str, task: Callable[[DictConfig], Any], argv: list[str]) -> None:
    """A sweep, or one of Hydra's own flags: Hydra's `hydra.main`, with the example's name as the
    job's (Hydra takes it from the task function's module)."""
    def job(cfg: DictConfig) -> None:
        task(cfg)

    job.__module__ = f"gallery.{name}"
    saved, sys.argv = sys.argv, [sys.argv[0], *argv]
    try:
        hydra.main(version_base="1.3", config_path=example_dir(name), config_name=name)(job)()
    finally:
        sys.argv = saved


def run_and_report(train: Callable[[Any], dict], keys: tuple[str, ...], cfg: DictConfig) -> None:
    report(run_cli(train, cfg), *keys)


def run_cli(train: Callable[[Any], dict], cfg: DictConfig) -> dict:
    """Run `train` for the command line.

    - A user-fixable error: one line on stderr, exit status 2. Hydra makes the run dir before the
      task starts; if the run fails before writing anything into it, the folders it made are
      removed (by `command_line`, which knows which ones existed; in a sweep, here).
    - A mistake that raised the error it is known for: its explanation on stderr and exit status 2;
      under `-m` the sweep goes on to the next job instead (its summary.json says "status":
      "raised").
    - A loss that became NaN or infinite: one line naming the step and the value, exit status 3.
    - A fault outside the gallery mid-run (a full disk, an env that raised): one line, and the
      command that resumes from the last checkpoint; exit status 5.
    - SIGINT/SIGTERM: the run stops after its current step and saves a checkpoint; one line says how
      to resume, and the exit status is 130 (SIGINT) or 143 (SIGTERM).
    """
    run_dir = hydra_run_dir()
    existed = run_dir is not None and run_dir.exists() and any(run_dir.iterdir())
    # the keys its lines name: the example's own where it declares them (EXAMPLE)
    example = getattr(sys.modules[train.__module__], "EXAMPLE", None)
    finished = False
    try:
        summary = train(cfg)
        finished = True
        return summary
    except Interrupted as stop:
        name = signal.Signals(stop.signum).name
        if stop.resumable:
            print(f"{name}: stopped after step {stop.step}; the checkpoint is in "
                  f"{stop.out_dir}/checkpoints. Resume with: {resume_command(train, stop.out_dir)}",
                  file=sys.stderr)
        else:
            print(f"{name}: stopped after step {stop.step}; this example does not resume: run it "
                  f"again",
                  file=sys.stderr)
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:  # before the run's own handler was in place
        print("interrupted before training started; nothing was saved", file=sys.stderr)
        sys.exit(130)
    except Diverged as err:  # summary.json says "status": "diverged"
        keys = example.lr_keys if example else ("lr",)
        rates = " or ".join(f"{key}={OmegaConf.select(cfg, key)}" for key in keys)
        print(f"error: {err} (try a smaller {rates})", file=sys.stderr)
        sys.exit(EXIT_STATUS["diverged"])
    except ExplainedMistake as err:
        if multirun():  # the sweep goes on; this job's summary.json records it
            print(f"error: {err}", file=sys.stderr)
            return {"status": "raised", "error": str(err)}
        print(f"error: {str(err).rstrip('.')}; {discard_raised_run(run_dir, existed, cfg)}",
              file=sys.stderr)
        sys.exit(EXIT_STATUS["bad_input"])
    except RunFault as err:  # a full disk, an env that raised: the last checkpoint stays
        kept = run_dir is not None and (run_dir / "checkpoints" / "last.pt").is_file()
        after = (f"; the last checkpoint is kept: once the fault is gone, resume with: "
                 f"{resume_command(train, run_dir)}" if kept else "; no checkpoint was written yet")
        print(f"error: {err}{after}", file=sys.stderr)
        sys.exit(EXIT_STATUS["fault"])
    except GalleryError as err:
        # a sweep's job folder (a single run's folders are command_line's to remove)
        if multirun() and run_dir is not None and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        refuse(f"error: {err}")
    # after GalleryError: DataError and DeviceError are RuntimeErrors too
    except (MemoryError, RuntimeError) as err:
        if not out_of_memory(err):
            raise
        left = clear_failed_run(run_dir, existed)
        line = out_of_memory_line(cfg, err, *([example.size_keys] if example else []))
        print(f"error: {line}; {left}", file=sys.stderr)
        sys.exit(EXIT_STATUS["out_of_memory"])
    finally:
        dist.teardown(finished)  # under torchrun: leave the process group before the process exits
        empty = run_dir is not None and run_dir.is_dir() and not any(run_dir.iterdir())
        if dist.rank() != 0 and empty:
            run_dir.rmdir()  # the folder Hydra made for a non-zero rank that started a second later


def out_of_memory(err: BaseException) -> bool:
    """The CPU allocator's failure ("can't allocate memory"), Python's MemoryError, or CUDA's
    OutOfMemoryError."""
    text = str(err)
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in text:
        return True
    return "out of memory" in text.lower() and "CUDA" in text


def out_of_memory_line(cfg: Any, err: BaseException, keys: tuple[str, ...] = ("batch_size",)
                       ) -> str:
    """One line: what ran out, the example's own size keys (EXAMPLE.size_keys) with their values,
    and the advice."""
    sizes = [f"{key}={OmegaConf.select(cfg, key)}" for key in keys]  # the composed DictConfig
    where = "CUDA" if "CUDA" in str(err) else "the CPU allocator"
    lower = " or ".join(keys)
    return (f"out of memory ({where}) at {', '.join(sizes)}: lower {lower} (or the model's "
            f"size), or free the memory other processes hold")


def discard_raised_run(run_dir: Path | None, existed: bool, cfg: Any) -> str:
    """A single run whose mistake raised the error it is known for: it would raise again on
    resume, so what it wrote goes (a continued run keeps its folder as it was), and the next run
    into its folder is not refused for it. Says so."""
    if run_dir is None or not run_dir.exists():
        return "nothing was written"
    if normalize_resume(getattr(cfg, "resume", "")):
        return f"{run_dir} keeps the run it continued"
    if not existed:
        shutil.rmtree(run_dir, ignore_errors=True)
    else:
        for name in (*Run.RESULTS, ".hydra", LOCK):
            path = run_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(
                missing_ok=True)
    return "nothing was kept"


def clear_failed_run(run_dir: Path | None, existed: bool) -> str:
    """After a run that failed: a run dir this run made and that holds no checkpoint is removed.
    Says what is left of the run: nothing, or a checkpoint to resume from."""
    if run_dir is None or not run_dir.exists():
        return "nothing was written"
    if (run_dir / "checkpoints" / "last.pt").is_file():
        return f"{run_dir} keeps its last checkpoint (resume=true continues it)"
    if not existed:
        shutil.rmtree(run_dir, ignore_errors=True)
        return f"nothing was kept (the empty run in {run_dir} was removed)"
    return f"{run_dir} is as it was before this run"


def check_out_dir(out_dir: str | None) -> None:
    """Before Hydra makes the run dir: out_dir (or the current folder, where outputs/ goes) can be
    made and written, found by making it and writing a file there, then removing what the check
    made. Otherwise one line naming it, exit status 2, instead of a traceback from inside Hydra."""
    path = Path(out_dir).expanduser().absolute() if out_dir else Path.cwd()
    shown = f"out_dir={out_dir}" if out_dir else (f"the current folder {path} (where outputs/ "
                                                  f"goes; set out_dir=...)")
    try:
        made = missing_folders(path)
    except OSError as err:  # a name too long, a loop of links, ...
        raise ConfigError(f"{shown}: cannot be used, {err.strerror.lower()}") from err
    existing = made[-1].parent if made else path
    if not existing.is_dir():
        raise ConfigError(f"{shown}: cannot be made, {existing} is a file")
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:  # no permission, a read-only or full disk, ...
        reason = (err.strerror or str(err)).lower()
        raise ConfigError(f"{shown}: cannot be made or written, {reason}") from err
    finally:
        remove_empty(made)


def resume_command(train: Callable, out_dir: Path | str) -> str:
    """The command line that continues this run: its own overrides, its out_dir, resume=true."""
    args = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else sys.argv[1:]
    own = ("out_dir", "resume", "overwrite")
    keep = [a for a in args if a.split("=", 1)[0].lstrip("+~") not in own]
    module = train.__module__
    if module == "__main__":  # `python -m gallery.gan` runs the module as __main__
        module = getattr(getattr(train, "__globals__", {}).get("__spec__"), "name", module)
    return " ".join(["python -m", module, *map(shlex.quote, keep),
                     f"out_dir={shlex.quote(str(out_dir))}", "resume=true"])


def print_help_if_asked(example: Any, argv: list[str] | None = None) -> None:
    """`--help` (or `-h`): the pattern and its mistakes, this example's config groups and its config
    with the command line's overrides, then exit 0. Written here rather than left to Hydra's
    `--help`, which lists every group of every plugin to show a handful and takes half a second
    doing it; Hydra's own flags stay one `--hydra-help` away."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" not in argv and "-h" not in argv:
        return
    overrides = [arg for arg in argv
                 if not arg.startswith("-") and not arg.startswith(("hydra.", "hydra/"))]
    try:
        config = OmegaConf.to_yaml(compose(example.name, overrides)).rstrip()
    except Exception:  # a bad override: the one line every bad input gets, exit 2
        composed_or_exit(example.name, overrides)
        raise
    config = annotated(config, example)
    listed = [f"{group}: {options}" for group, options in example.groups.items()]
    print(example.describe(), "", *(["== Configuration groups ==",  # maml has none
                                     "Compose the config from these groups (group=option)", "",
                                     *listed, ""] if listed else []),
          "== Config ==", "Override anything in the config (key=value, nested.key=value)", "",
          config, "", f"Hydra's own flags (-m sweeps, --cfg job, ...): python -m "
                      f"gallery.{example.name} --hydra-help", sep="\n")
    sys.stdout.flush()
    sys.exit(0)


def annotated(config_yaml: str, example: Any) -> str:
    """The config's top-level lines, each followed by what its key means: the comment beside (or
    above) the field in the example's schema or in BaseConfig, where there is one."""
    said: dict[str, str] = {}
    for source in (inspect.getsource(config_module), inspect.getsource(example.module)):
        above = ""
        for line in source.splitlines():
            if match := re.match(r"^    # (.+)$", line):
                above = match.group(1)
            elif match := re.match(r"^    (\w+): [^=]+=[^#]*?(?:#\s*(.+))?$", line):
                if meaning := match.group(2) or above:
                    said.setdefault(match.group(1), meaning)
                above = ""
            else:
                above = ""
    return "\n".join(f"{line}  # {said[key]}" if (key := line.split(":", 1)[0]) in said
                     and not line.startswith(" ") and ":" in line else line
                     for line in config_yaml.splitlines())


def report(summary: dict, *keys: str) -> None:
    """The end of a run on the command line: the named results, rounded, and where the outputs went
    (rank 0 only, under torchrun)."""
    if dist.rank() != 0:
        return
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"
        counted = isinstance(value, int) and not isinstance(value, bool)
        if isinstance(value, list):  # a value per pass, per seed: each one rounded
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return f"{value:,}" if counted else str(value)

    print(" ".join(f"{k}={fmt(summary[k])}" for k in keys if summary.get(k) is not None))
    if "out_dir" in summary:
        print(f"outputs: {summary['out_dir']}")


def explain_override_error(name: str, err: Exception) -> str:
    """One line for one of Hydra's composition errors, naming the key and what is allowed."""
    text = str(err)
    if match := re.search(r"Could not override '([^']+)'", text):
        key = match.group(1)
        known = known_keys(name)
        near = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        top = ", ".join(k for k in known if "." not in k)
        return f"{key!r} is not a config key of {name}; {hint}known keys: {top}"
    if match := re.search(r"Could not find '([^']+)/([^']+)'", text):
        group, option = match.groups()
        options = re.findall(r"^\t(\S+)$", text.split("Config search path")[0], flags=re.M)
        choices = ", ".join(options)
        return f"{group}={option} is not a {group} option of {name}; choose from: {choices}"
    if match := re.search(r"Error merging override (\S+)", text):
        cause = str(err.__cause__ or "").splitlines()
        return f"{match.group(1)}: {cause[0] if cause else 'a value of the wrong type'}"
    if match := re.search(r"Error parsing override '([^']*)'", text):
        return (f"cannot read the override {match.group(1)!r}: write key=value (for example "
                f"steps=100)")
    if match := re.search(r"LexerNoViableAltException: ([^=\s]+)=(.*)", text):
        key, value = match.groups()
        return (f"{key}={value}: Hydra cannot read this value unquoted; quote it: "
                f"{key}='{value}' (and quote the whole override for the shell)")
    cause = str(err.__cause__ or "").splitlines()
    line = text.splitlines()[0] + (f" {cause[0]}" if cause else "")
    key = getattr(err, "full_key", None) or getattr(err.__cause__, "full_key", None)
    return f"{key}: {line}" if key and not line.startswith(str(key)) else line


@functools.cache
def known_keys(name: str) -> list[str]:
    """Every key of an example's config, dotted, in the schema's order."""
    return _keys(OmegaConf.to_container(compose(name), resolve=False))


def _keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    for key, value in (node.items() if isinstance(node, dict) else []):
        keys.append(f"{prefix}{key}")
        keys += _keys(value, f"{prefix}{key}.")
    return keys
