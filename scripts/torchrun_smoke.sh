#!/usr/bin/env bash
# The DDP smoke test: gan, finetune and tbptt under torchrun on their own code path (tests/test_ddp.py).
#   scripts/torchrun_smoke.sh                                         2 processes, gloo, on the CPU
#   GALLERY_DDP_NPROC=1 GALLERY_DDP_DEVICE=cuda scripts/torchrun_smoke.sh   one GPU, nccl
# Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/_bootstrap.sh"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests/test_ddp.py -k "under_ddp" "$@"
