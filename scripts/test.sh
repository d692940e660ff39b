#!/usr/bin/env bash
# The tests, bootstrapping .venv first.
#   scripts/test.sh              the fast tier: everything but the learning gates and the GPU tests
#                                (about 8 minutes on 2 cores, two pytest workers)
#   scripts/test.sh --gates      the learning gates (marker slow, fixed seeds; about 15 minutes on 2 cores)
#   scripts/test.sh --gpu        the GPU tests (a missing GPU fails them instead of skipping)
#   scripts/test.sh --peers      the tests against peer libraries (TRL), installing them first with
#                                pip --target into the gallery's cache (never a dependency)
#   scripts/test.sh [pytest args]  the fast tier with these pytest arguments (a -m of yours replaces the
#                                tier and its workers: scripts/test.sh -m slow is the gates, one process)
# GALLERY_TEST_WORKERS sets the fast tier's pytest-xdist workers (default 2; 0 runs in this process).
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
cd "$ROOT"
case "${1:-}" in
    --gates) shift; exec "$VENV/bin/python" -m pytest -m slow "$@" ;;
    --gpu) shift; exec env GALLERY_GPU_ONLY=1 "$VENV/bin/python" -m pytest -m gpu "$@" ;;
    --peers) shift; "$VENV/bin/python" -m scripts.measure.peers
             exec "$VENV/bin/python" -m pytest -m peer "$@" ;;
esac
tier=(-m "not slow and not gpu and not peer")
workers=(-n "${GALLERY_TEST_WORKERS:-2}" --dist loadgroup)  # a group shares a worker: one site build
for arg in "$@"; do
    case "$arg" in
        -m|-m*) tier=(); workers=() ;;  # a tier of your own runs in one process unless you pass -n
        -n|-n*|--numprocesses*|no:xdist) workers=() ;;
    esac
done
exec "$VENV/bin/python" -m pytest "${tier[@]}" "${workers[@]}" "$@"
