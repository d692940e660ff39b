"""Character-level text: the embedded pydoc corpus, any local file, and two online corpora.

`pydoc` is the text of `pydoc_data.topics`, the help topics that ship inside CPython itself, so it
is there wherever Python is. The online corpora download once into `root` and are checked against
a SHA-256 before use; offline they fail with a message that names the file and an alternative.
"""

from __future__ import annotations

import hashlib
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import MISSING

from gallery.core.config import require_choice, require_non_negative, require_positive
from gallery.core.errors import ConfigError, DataError
from gallery.core.io import download_timeout

ONLINE = {
    "tiny_shakespeare": {
        "url": "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        "file": "tiny_shakespeare.txt",
        "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    },
    "wikitext2": {
        "url": "https://s3.amazonaws.com/research.metamind.io/wikitext/wikitext-2-raw-v1.zip",
        "file": "wikitext-2-raw-v1.zip",
        "member": "wikitext-2-raw/wiki.train.raw",
        "sha256": "ef7edb566e3e2b2d31b29c1fdb0c89a4cc683597484c3dc2517919c615435a11",
    },
}


@dataclass
class TextSource:
    """A text example's `data` group (configs/<example>/data/): which text, and where."""
    name: str = MISSING  # pydoc (embedded) | file (data.path) | tiny_shakespeare | wikitext2
    path: str | None = None  # data=file: any UTF-8 text file
    root: str = "${cache_dir:}"  # where online corpora are downloaded


def pydoc_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[key] for key in sorted(topics))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(name: str, root: str) -> Path:
    """Download `name` into `root` once (atomically), and verify its checksum every time."""
    spec = ONLINE[name]
    path = Path(root) / spec["file"]
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".part")
        try:
            with download_timeout():
                urllib.request.urlretrieve(spec["url"], tmp)
        # URLError, a timeout, a refused connection: all mean "not available"
        except OSError as err:
            tmp.unlink(missing_ok=True)
            raise DataError(
                f"could not download {name} from {spec['url']} into {path.resolve()} ({err}). "
                "Offline? Put the file there yourself, or use data=pydoc (embedded) or data=file "
                "data.path=..."
            ) from err
        tmp.replace(path)
    actual = _sha256(path)
    if actual != spec["sha256"]:
        raise DataError(f"{path} has SHA-256 {actual}, expected {spec['sha256']}: delete it and "
                        f"try again")
    return path


def load_text(name: str, path: str | None = None, root: str | None = None) -> str:
    if name == "pydoc":
        return pydoc_text()
    if name == "file":
        if not path:
            raise DataError("data=file needs data.path=/path/to/text.txt")
        file = Path(path)
        if not file.is_file():
            raise DataError(f"data.path={file} does not exist")
        try:
            text = file.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"data.path={file} is not UTF-8 text ({err})") from err
        if len(text) < 100:
            raise DataError(f"data.path={file} has {len(text)} characters; a character model needs "
                            f"more")
        return text
    if name in ONLINE:
        from gallery.core.config import cache_root

        fetched = fetch(name, root or str(cache_root()))
        if "member" in ONLINE[name]:
            with zipfile.ZipFile(fetched) as zf:
                return zf.read(ONLINE[name]["member"]).decode("utf-8")
        return fetched.read_text(encoding="utf-8")
    raise DataError(f"unknown text corpus {name!r}")


@dataclass(frozen=True)
class CharVocab:
    """Characters of the training split, sorted; index 0 is the unknown-character slot."""

    chars: str

    @classmethod
    def build(cls, text: str) -> CharVocab:
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> torch.Tensor:
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        return torch.tensor([index.get(c, 0) for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[i - 1] if i > 0 else "\ufffd" for i in ids)

    # a checkpoint holds the vocabulary, so that a resumed run can check it reads the same data
    def state_dict(self) -> dict:
        return {"chars": self.chars}

    def load_state_dict(self, state: dict) -> None:
        if state["chars"] != self.chars:
            raise ConfigError("resume: the checkpoint was trained on another vocabulary (data "
                              "changed?)")


def text_windows(ids: torch.Tensor, n: int, length: int,
                 generator: torch.Generator) -> torch.Tensor:
    """`n` windows of `length` characters at random places in the text: (n, length)."""
    starts = torch.randint(len(ids) - length, (n,), generator=generator)
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


def require_learnable(text: str, window: int, target_chars: str) -> None:
    """Refuse, naming the keys, a text too short for a prompt and its completion, or a reward
    that no character of the text can earn (every reward 0: nothing to learn)."""
    if window >= len(text):
        raise ConfigError(f"prompt_len + completion_len = {window} must be shorter than the text "
                          f"({len(text):,} characters)")
    if not set(target_chars) & set(text):
        raise ConfigError(f"target_chars={target_chars!r}: no character of it is in the text, so "
                          f"every reward is 0 and nothing can be learned")


def validate_char_model(cfg) -> None:
    """What grpo and dpo share: the text, the character model's shape, the target characters."""
    require_choice(cfg, "data.name", ["pydoc", "file", "tiny_shakespeare", "wikitext2"])
    require_positive(cfg, "prompt_len", "completion_len", "d_model", "layers", "heads",
                     "eval_prompts")
    require_non_negative(cfg, "pretrain_steps")
    if not cfg.target_chars:
        raise ConfigError("target_chars must name at least one character, got ''")
    if cfg.d_model % cfg.heads:
        raise ConfigError(f"d_model={cfg.d_model} must be a multiple of heads={cfg.heads}: each "
                          f"head takes d_model / heads of every vector")
