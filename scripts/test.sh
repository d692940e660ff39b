#!/usr/bin/env bash
# Run the test suite (bootstrapping .venv first). Extra arguments go to pytest: scripts/test.sh -m "not slow"
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
