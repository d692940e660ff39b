#!/usr/bin/env bash
# scripts/run.sh                      the quick tour: every pattern next to its mistakes, with a report
# scripts/run.sh tour budget=full     the full tour (tens of minutes on a small CPU)
# scripts/run.sh list                 the examples and their mistakes
# scripts/run.sh show <example>       the pattern functions, and each mistake as a diff
# scripts/run.sh lessons | smoke      the tutorial's claims as proofs; a CI smoke test of every pattern
# scripts/run.sh <example> [k=v ...]  one example with Hydra overrides, e.g. scripts/run.sh gan data=grid25
USAGE="usage: scripts/run.sh [list | show <example> | lessons | smoke [k=v ...] | tour [k=v ...] | <example> [k=v ...]]"
case "${1:-}" in
    -h|--help|help) echo "$USAGE"; exit 0 ;;
    -*) echo "$USAGE" >&2; exit 2 ;;
esac
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
if [ $# -eq 0 ]; then
    echo "the quick tour; the full one is: scripts/run.sh tour budget=full" >&2
    set -- tour budget=quick
fi
case "$1" in
    list|tour|show|lessons|smoke) exec "$VENV/bin/python" -m gallery "$@" ;;
    *)
        if [ ! -f "$ROOT/gallery/$1.py" ] || ! "$VENV/bin/python" -c "import sys; from gallery.core.registry import examples; sys.exit(sys.argv[1] not in examples())" "$1"; then
            echo "error: no example named '$1'; the examples are:" >&2
            "$VENV/bin/python" -m gallery >&2
            exit 2
        fi
        example="$1"; shift
        exec "$VENV/bin/python" -m "gallery.$example" "$@" ;;
esac
