#!/usr/bin/env bash
# Merge a trained adapter into its base checkpoint: a standalone RWKV-7 .pth for any runtime
# (the `rwkv` package, Albatross, RWKV-Runner). r and alpha come from the adapter folder.
#
#   scripts/merge_lora.sh bsl-v1                         # runs/bsl-v1/adapter -> runs/bsl-v1/merged.pth
#   scripts/merge_lora.sh bsl-v1 --output models/bsl-v1.pth --overwrite
#   scripts/merge_lora.sh runs/bsl-v1/checkpoints/step-000400 --output step400.pth
#   scripts/merge_lora.sh bsl-v1 --model models/base/RWKV-x070-World-1.5B-v3-20250127-ctx4096.pth
#
# The base defaults to the file the run was trained on (recorded in the adapter; `rwkv1c merge` reads it). A QLoRA adapter merges
# into the original bf16 base (docs/training.md: the quantisation gap).
set -euo pipefail

usage() {
    echo "usage: scripts/merge_lora.sh RUN_NAME|ADAPTER_DIR [--output OUT.pth] [--model BASE.pth] [--force] [--overwrite]" >&2
}

# 1. Run from the repository root, whatever the caller's folder.
cd "$(dirname "$0")/.."
source scripts/lib/compose.sh
python_bin="$(rwkv1c_python)"

# 2. The adapter: a folder, or the name of a run under RUNS_DIR.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
    usage
    exit 2
fi
target="$1"
shift
if [ -f "$target/adapter_config.json" ]; then
    adapter="$target"
    output_default="$target/merged.pth"
else
    runs_dir="$(rwkv1c_runs_dir)"
    adapter="$runs_dir/$target/adapter"
    output_default="$runs_dir/$target/merged.pth"
    if [ ! -f "$adapter/adapter_config.json" ]; then
        echo "merge_lora: no adapter at $target or $adapter (a finished run has runs/NAME/adapter/)" >&2
        exit 1
    fi
fi

# 3. Merge; the caller's flags come last and win.
exec "$python_bin" -m rwkv1c merge --adapter "$adapter" --output "$output_default" "$@"
