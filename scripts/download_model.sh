#!/usr/bin/env bash
# Download a base RWKV-7 checkpoint from the Hugging Face Hub into models/base/ (size and sha256 checked).
#
#   scripts/download_model.sh                  # the workspace's MODEL_PRESET (configs/workspace.env)
#   scripts/download_model.sh rwkv7-0.4b       # another preset from configs/model/
#   scripts/download_model.sh https://huggingface.co/BlinkDL/rwkv-7-world/resolve/main/<file>.pth
#   HF_ENDPOINT=https://<mirror> scripts/download_model.sh   # through a Hugging Face mirror
#
# A dropped connection is resumed within the run; a run that fails keeps no partial file, so running the
# same command again starts that file over.
set -euo pipefail

cd "$(dirname "$0")/.."

# 1. The project's virtual environment (scripts/bootstrap.sh makes it).
if [ ! -x .venv/bin/python ]; then
    echo "download_model: no .venv here yet: run scripts/bootstrap.sh first" >&2
    exit 1
fi

# 2. What to fetch: the argument, else the workspace's MODEL_PRESET (read by rwkv1c.config, its one home).
source_arg="${1:-$(.venv/bin/python -c 'from rwkv1c.config import load_workspace; print(load_workspace().model_preset)')}"

# 3. Fetch through huggingface_hub, verify, rename into place, describe.
exec .venv/bin/python -m rwkv1c download "$source_arg"
