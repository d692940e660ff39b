# Sourced by run.sh and test.sh: make .venv and install the project into it, once per pyproject.toml.
# The stamp holds pyproject.toml's hash, so an unchanged project skips the install entirely.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.detach-gallery-installed"

if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    echo "error: $PY is missing or older than Python 3.10 (set PYTHON=/path/to/python3.10+)" >&2
    exit 2
fi
want="$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV" >&2
    "$PY" -m venv "$VENV"
    rm -f "$STAMP"
fi
if [ "$(cat "$STAMP" 2>/dev/null || true)" != "$want" ]; then
    echo "installing detach-gallery and its dev tools into $VENV (a few minutes the first time)" >&2
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e "$ROOT[dev,sweep,docs]"
    echo "$want" > "$STAMP"
fi
