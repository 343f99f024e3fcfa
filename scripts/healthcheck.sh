#!/usr/bin/env bash
# Check this machine for fine-tuning: WSL2 or Linux, GPU and driver, the torch CUDA build, bitsandbytes,
# Triton and flash-linear-attention (each runs a tiny CUDA op), RAM and swap, free disk, Windows-drive paths.
# Every problem comes with its fix; the exit code is 1 when a check fails.
#
#   scripts/healthcheck.sh                       # table
#   scripts/healthcheck.sh --json                # {"checks": [{"name", "status", "detail", "hint"}, ...]}
#   scripts/healthcheck.sh --model rwkv7-7.2b    # RAM / VRAM / disk needs of another preset
set -euo pipefail

cd "$(dirname "$0")/.."

# 1. The project's virtual environment (scripts/bootstrap.sh makes it).
if [ ! -x .venv/bin/python ]; then
    echo "healthcheck: no .venv here yet: run scripts/bootstrap.sh first" >&2
    exit 1
fi

# 2. The checks themselves live in `rwkv1c doctor`; this script only runs it.
exec .venv/bin/python -m rwkv1c doctor "$@"
