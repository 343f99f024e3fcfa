#!/usr/bin/env bash
# QLoRA fine-tuning: frozen base linears in 4-bit NF4 (configs/profile/qlora-nf4.env): the least VRAM.
#
#   scripts/train_qlora_nf4.sh --data data/bsl --run bsl-v1          # base: MODEL_PRESET's checkpoint in models/base/
#   scripts/train_qlora_nf4.sh --data data/bsl --run bsl-v1 --max-steps 500 --ctx-len 2048 --lr 2e-4
#   scripts/train_qlora_nf4.sh --data data/chat.jsonl --model models/base/other.pth --override TRAIN_EXTRA=norms
#   scripts/train_qlora_nf4.sh --run bsl-v1 --resume                 # continue after Ctrl-C or a crash
#   scripts/train_qlora_nf4.sh --help                                # every flag
#
# Settings compose as configs/workspace.env < configs/model/<MODEL_PRESET>.env < configs/profile/qlora-nf4.env
# < flags; the resolved settings are saved in runs/NAME/config.json. NUM_GPUS > 1 (or --devices N) trains
# on several GPUs through torchrun. Default data: data/train (from `rwkv1c prepare ... --output data/train`).
set -euo pipefail

# 1. Run from the repository root, whatever the caller's folder.
cd "$(dirname "$0")/.."

# 2. Compose the defaults and train (scripts/lib/compose.sh).
source scripts/lib/compose.sh
train_with_profile qlora-nf4 "$@"
