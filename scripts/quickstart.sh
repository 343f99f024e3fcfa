#!/usr/bin/env bash
# The whole pipeline on an embedded default, from a fresh clone:
#   bootstrap -> prepare the bundled sample data -> model -> LoRA training -> merge -> generate.
#
# With no checkpoint in models/base/ it initialises a tiny random RWKV-7 and runs on the CPU in a few
# minutes (a smoke test of every step). With an official RWKV-7 .pth in models/base/ and a GPU it
# fine-tunes that checkpoint with the default preset and profile from configs/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUN=${RUN:-quickstart}
SAMPLE=samples/1c-sample.jsonl

# 1. Environment (idempotent).
./scripts/bootstrap.sh
source scripts/lib/compose.sh
RWKV1C=("$(rwkv1c_python)" -m rwkv1c)
RUNS=$(rwkv1c_runs_dir)  # RUNS_DIR of configs/workspace.env, where `train` writes

# 2. Data: JSONL -> binidx (+ loss mask for the instruction rows).
mkdir -p data
"${RWKV1C[@]}" prepare "$SAMPLE" --output data/sample

# 3. Model: a real checkpoint when present and a GPU is usable, else a tiny one made here.
BASE=$(ls -1 models/base/*.pth 2>/dev/null | head -n 1 || true)
if [[ -n "$BASE" ]] && .venv/bin/python -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "quickstart: fine-tuning $BASE on the GPU"
  TRAIN_ARGS=(--max-steps 200)
else
  [[ -n "$BASE" ]] && echo "quickstart: $BASE found but no usable GPU: using a tiny model on the CPU instead"
  BASE=models/base/quickstart-tiny.pth
  if [[ ! -f "$BASE" ]]; then
    "${RWKV1C[@]}" init "$BASE" --n-layer 2 --n-embd 128 --seed 0
  fi
  # a random model learns little through LoRA alone, so the norms and time-mix parameters train too
  TRAIN_ARGS=(--max-steps 300 --ctx-len 128 --micro-bsz 4 --grad-accum 1 --lr 1e-2 --lora-r 64 --lora-alpha 128
              --val-every 100 --override TRAIN_EXTRA=norms,time_mix)
fi
"${RWKV1C[@]}" inspect "$BASE"

# 4. LoRA training ($RUNS/$RUN/), replacing an earlier quickstart run.
"${RWKV1C[@]}" train --model "$BASE" --data data/sample --profile lora-bf16 --run "$RUN" --overwrite "${TRAIN_ARGS[@]}"

# 5. Merge the adapter into a standalone .pth that any RWKV runtime loads.
"${RWKV1C[@]}" merge --model "$BASE" --adapter "$RUNS/$RUN/adapter" --output "$RUNS/$RUN/merged.pth" --overwrite

# 6. Generate with the merged model.
echo "quickstart: generating with $RUNS/$RUN/merged.pth"
"${RWKV1C[@]}" generate --model "$RUNS/$RUN/merged.pth" --max-tokens 80 --temperature 0 \
  --prompt $'User: Напиши процедуру, которая выводит сообщение "Привет".\n\nAssistant:'
echo
echo "quickstart: done. The run is in $RUNS/$RUN/ (metrics.jsonl, loss.png, adapter/, merged.pth)."
