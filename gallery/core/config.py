"""The fields every example shares (the schema base), and value checks that name the key.

Types and unknown keys are caught by Hydra against the dataclass schema before anything runs;
the checks here catch values a type cannot express (a step count of 0, an unknown mistake).
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gallery.core.errors import ConfigError

# `hydra.run.dir` is `${if_null:${out_dir},outputs/...}`: an explicit out_dir is the run dir.
if not OmegaConf.has_resolver("if_null"):
    OmegaConf.register_new_resolver("if_null", lambda value,
                                    default: default if value is None else value)


def cache_root() -> Path:
    """Where downloads and the pretrained digits backbone go: $GALLERY_CACHE, else
    $XDG_CACHE_HOME/detach-gallery, else ~/.cache/detach-gallery. One place for every run, from any
    folder."""
    if os.environ.get("GALLERY_CACHE"):
        return Path(os.environ["GALLERY_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "detach-gallery"


# `${cache_dir:}` or `${cache_dir:digits_cnn}` in a config: a folder below cache_root().
if not OmegaConf.has_resolver("cache_dir"):
    OmegaConf.register_new_resolver("cache_dir", lambda sub="": str(cache_root() / sub))


def config_root() -> Path:
    """`configs/` beside the package in a checkout; inside the package (gallery/configs) in a
    wheel."""
    package = Path(__file__).resolve().parent.parent
    shipped = package / "configs"
    return shipped if shipped.is_dir() else package.parent / "configs"


def config_dir(name: str) -> str:
    """An example's own config folder, configs/<name>/: its primary YAML and its groups (data/,
    env/, backbone/), so one example's options never show in another's `--help`. Absolute, so Hydra
    reads it from any working directory."""
    return str(config_root() / name)


# Hydra's settings shared by every example, as the option `hydra: gallery` (configs/hydra.yaml).
ConfigStore.instance().store(group="hydra", name="gallery",
                             node=OmegaConf.load(config_root() / "hydra.yaml"))
# `hydra/launcher=slurm`: hydra-submitit-launcher's SLURM launcher with the gallery's defaults
# (configs/launcher/slurm.yaml). `hydra/launcher=joblib` is the joblib plugin's own option.
ConfigStore.instance().store(group="hydra/launcher", name="slurm",
                             node=OmegaConf.load(config_root() / "launcher" / "slurm.yaml"))


@dataclass
class BaseConfig:
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    threads: str = "auto"  # CPU intra-op threads: auto (1 for the small models), or a count
    steps: int = 1000
    out_dir: str | None = None  # None: Hydra's run dir, outputs/<example>/<date>/<time>
    log_every: int = 100
    eval_every: int = 1000
    # steps between checkpoints (0: at the end, and on a signal); each example sets its own
    ckpt_every: int = 0
    # true: continue <out_dir>'s run from its checkpoints/last.pt; a path: start from that file
    resume: str = "false"
    overwrite: bool = False  # replace the run already in out_dir (otherwise it is refused)
    mistake: str = "none"
    deterministic: bool = False
    compile: bool = False  # torch.compile the models (warm-up: tens of seconds on a CPU)
    # bf16 autocast on a CUDA GPU with bf16; float32 elsewhere (never fp16: no scaler)
    amp: bool = True
    progress: bool | None = None  # None: a bar only when stderr is a terminal
    tensorboard: bool = False


def register_schema(name: str) -> Callable[[type], type]:
    """A class decorator: `@register_schema("dqn")` above `@dataclass` stores the schema as
    `dqn_schema`. The primary YAML lists `<name>_schema` first in its defaults, so every key it sets
    is typed.

    Under `python -m gallery.<name>` the schema's classes belong to `__main__`, which a sweep's
    worker process (the joblib launcher's) cannot import by name; the config would reach it pickled
    by value and fail there. So the schema registered is always the importable module's
    (gallery.<name>). The module's own `__spec__` says which, not `sys.modules["__main__"]`'s: a
    runner such as `python -m cProfile -m gallery.dqn` keeps its own `__main__` there."""

    def register(schema: type) -> type:
        # the globals of the module body that applies the decorator
        spec = sys._getframe(1).f_globals.get("__spec__")
        if schema.__module__ == "__main__" and spec is not None and spec.name != "__main__":
            # runs the module under its own name; it registers its schema
            importlib.import_module(spec.name)
            return schema
        ConfigStore.instance().store(name=f"{name}_schema", node=schema)
        return schema

    return register


def require_positive(cfg: Any, *keys: str) -> None:
    for key in keys:
        value = _get(cfg, key)
        # written so that NaN fails too (it compares false both ways)
        if value is None or not value > 0:
            raise ConfigError(f"{key} must be > 0, got {value}")


def require_non_negative(cfg: Any, *keys: str) -> None:
    for key in keys:
        value = _get(cfg, key)
        if value is None or not value >= 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")


def require_range(cfg: Any, key: str, low: float, high: float) -> None:
    value = _get(cfg, key)
    if value is None or not (low <= value <= high):
        raise ConfigError(f"{key} must be in [{low}, {high}], got {value}")


def require_choice(cfg: Any, key: str, choices: Iterable[str]) -> None:
    value = _get(cfg, key)
    choices = list(choices)
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not one of: {', '.join(choices)}")


MAX_THREADS = 4096  # torch takes a C int; far more than any machine's cores


def validate_base(cfg: BaseConfig, mistakes: Iterable[str]) -> None:
    require_positive(cfg, "steps", "log_every", "eval_every")
    require_non_negative(cfg, "ckpt_every", "seed")
    require_choice(cfg, "mistake", ["none", *(m for m in mistakes if m != "none")])
    if normalize_resume(cfg.resume) and cfg.overwrite:
        raise ConfigError("resume and overwrite=true contradict each other: resume goes on with "
                          "the run in out_dir, overwrite starts it again; pick one")
    for key, value in _folder_keys(cfg):
        if value and Path(str(value)).exists() and not Path(str(value)).is_dir():
            raise ConfigError(f"{key}={value} is a file; it names a folder (give a folder, or a "
                              f"path that does not exist yet)")
    threads = str(cfg.threads)
    if threads != "auto" and not (threads.isdigit() and 1 <= int(threads) <= MAX_THREADS):
        raise ConfigError(f"threads={threads!r} must be auto or a whole number from 1 to "
                          f"{MAX_THREADS}")


def _folder_keys(cfg: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Every key of the config that names a folder (`out_dir`, `pretrain_dir`,
    `backbone.checkpoint_dir`, ...), with its value, nested groups included."""
    found = []
    for f in fields(cfg) if is_dataclass(cfg) else ():
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            found += _folder_keys(value, f"{prefix}{f.name}.")
        elif f.name.endswith("_dir"):
            found.append((f"{prefix}{f.name}", value))
    return found


def normalize_resume(value: Any) -> str:
    """"" (do not resume), "true" (this out_dir's last checkpoint), or the path of a checkpoint."""
    text = str(value).strip()
    if text.lower() in ("", "false", "0", "no", "none"):
        return ""
    return "true" if text.lower() in ("true", "1", "yes") else text


def to_schema(cfg: DictConfig | Any) -> Any:
    """A composed DictConfig becomes its dataclass instance (an already-built instance passes
    through).

    Keys added with `+key=...` pass Hydra's schema check and `to_object` would drop them
    silently, so they are looked for here and refused by name.
    """
    if not isinstance(cfg, DictConfig):
        return cfg
    _refuse_unknown_keys(cfg, "")
    try:
        typed = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as err:  # an interpolation that fails, or resolves to a bad type
        key = getattr(err, "full_key", None) or "a config value"
        raise ConfigError(f"{key}: {str(err).splitlines()[0]}") from err
    require_finite_floats(typed)
    return typed


def require_finite_floats(config: Any, prefix: str = "") -> None:
    """The one rule for floats: every float in every schema is a finite number (NaN and +-inf are
    refused by name), unless its field says otherwise with `field(default=..., metadata={"finite":
    False})`."""
    for f in fields(config):
        value, key = getattr(config, f.name), f"{prefix}{f.name}"
        if is_dataclass(value):
            require_finite_floats(value, f"{key}.")
        elif isinstance(value, float) and not math.isfinite(value) \
                and f.metadata.get("finite", True):
            raise ConfigError(f"{key} must be a finite number, got {value}")


def _refuse_unknown_keys(node: DictConfig, prefix: str) -> None:
    schema = OmegaConf.get_type(node)
    known = {f.name for f in fields(schema)} if is_dataclass(schema) else None
    for key in node.keys():
        full = f"{prefix}{key}"
        if known is not None and key not in known:
            raise ConfigError(
                f"config key {full!r} is not in the schema {schema.__name__}; "
                f"known keys: {', '.join(sorted(known))}"
            )
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            _refuse_unknown_keys(child, f"{full}.")


def _get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return node
