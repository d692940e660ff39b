#!/usr/bin/env bash
# scripts/run.sh                      the tour: every pattern next to its mistakes, with a report
# scripts/run.sh list                 the examples and their mistakes
# scripts/run.sh <example> [k=v ...]  one example with Hydra overrides, e.g. scripts/run.sh gan data=grid25
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
if [ $# -eq 0 ]; then
    if [ -f "$ROOT/gallery/tour.py" ]; then set -- tour; else set -- list; fi
fi
case "$1" in
    list|tour) exec "$VENV/bin/python" -m gallery "$@" ;;
    -*) echo "usage: scripts/run.sh [list | tour | <example> [key=value ...]]" >&2; exit 2 ;;
    *)
        if [ ! -f "$ROOT/gallery/$1.py" ]; then
            echo "error: no example named '$1'; the examples are:" >&2
            "$VENV/bin/python" -m gallery >&2
            exit 2
        fi
        example="$1"; shift
        exec "$VENV/bin/python" -m "gallery.$example" "$@" ;;
esac
