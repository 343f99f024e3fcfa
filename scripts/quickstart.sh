#!/usr/bin/env bash
# The whole pipeline on an embedded default, from a fresh clone:
#   bootstrap -> prepare the bundled sample data -> model -> LoRA training -> merge -> generate.
#
# With no checkpoint in MODELS_DIR (models/base/ unless configs/workspace.env says otherwise) it initialises a
# tiny random RWKV-7 and runs on the CPU in a few minutes: a smoke test of every step, whose model writes
# nonsense. With an official RWKV-7 .pth there and a GPU it fine-tunes that checkpoint: MODEL_PRESET's file
# when present, else the smallest .pth in the folder.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

RUN=${RUN:-quickstart}
SAMPLE=samples/1c-sample.jsonl

# 1. Environment (idempotent).
./scripts/bootstrap.sh
source scripts/lib/compose.sh
RWKV1C=("$(rwkv1c_python)" -m rwkv1c)
RUNS=$(rwkv1c_runs_dir)      # RUNS_DIR of configs/workspace.env, where `train` writes
MODELS=$(rwkv1c_models_dir)  # MODELS_DIR, where `download` writes

# 2. Data: JSONL -> binidx (+ loss mask for the instruction rows).
mkdir -p data
"${RWKV1C[@]}" prepare "$SAMPLE" --output data/sample

# 3. Model: a real checkpoint when present and a GPU is usable, else a tiny one made here.
BASE=$(rwkv1c_real_base)
TINY=no
if [[ -n "$BASE" ]] && "$(rwkv1c_python)" -c 'import torch, sys; sys.exit(not torch.cuda.is_available())'; then
  echo "quickstart: fine-tuning $BASE on the GPU"
  TRAIN_ARGS=(--max-steps 200)
else
  [[ -n "$BASE" ]] && echo "quickstart: $BASE found but no usable GPU: using a tiny model on the CPU instead"
  TINY=yes
  BASE="$MODELS/$RWKV1C_QUICKSTART_TINY"
  if [[ ! -f "$BASE" ]]; then
    "${RWKV1C[@]}" init "$BASE" --n-layer 2 --n-embd 128 --seed 0
  fi
  # a random model learns little through LoRA alone, so the norms and time-mix parameters train too
  TRAIN_ARGS=(--max-steps 300 --ctx-len 128 --micro-bsz 4 --grad-accum 1 --lr 1e-2 --lora-r 64 --lora-alpha 128
              --val-every 100 --override "TRAIN_EXTRA=norms,time_mix")
fi
"${RWKV1C[@]}" inspect "$BASE"

# 4. LoRA training ($RUNS/$RUN/), replacing an earlier quickstart run.
"${RWKV1C[@]}" train --model "$BASE" --data data/sample --profile lora-bf16 --run "$RUN" --overwrite "${TRAIN_ARGS[@]}"

# 5. Merge the adapter into a standalone .pth that any RWKV runtime loads.
MERGED="$RUNS/$RUN/merged.pth"
"${RWKV1C[@]}" merge --model "$BASE" --adapter "$RUNS/$RUN/adapter" --output "$MERGED" --overwrite

# 6. Generate with the merged model.
echo "quickstart: generating with $MERGED"
"${RWKV1C[@]}" generate --model "$MERGED" --max-tokens 80 --temperature 0 \
  --prompt $'User: Напиши процедуру, которая выводит сообщение "Привет".\n\nAssistant:'
echo

# 7. What this was, and what to do next.
echo "quickstart: done. The run is in $RUNS/$RUN/ (metrics.jsonl, loss.png, adapter/, merged.pth)."
if [[ "$TINY" == yes ]]; then
  cat <<TEXT
quickstart: the model above is a tiny random one trained for a few minutes on the CPU: it writes nonsense.
            This run only shows that every step works here. For a model that writes 1C code:
  .venv/bin/rwkv1c doctor              # is this machine ready (GPU, driver, torch build, RAM)?
  scripts/download_model.sh            # the official checkpoint of MODEL_PRESET into $MODELS
  ./scripts/quickstart.sh              # again: with that checkpoint and a GPU it fine-tunes the real model
TEXT
fi
cat <<TEXT
Try the result:
  .venv/bin/rwkv1c chat --model $MERGED                      # talk to it in the terminal
  .venv/bin/rwkv1c serve --model $MERGED                     # OpenAI-compatible API at http://127.0.0.1:8000/v1
  .venv/bin/rwkv1c eval --model $BASE --model $MERGED \\
      --data HELD-OUT.jsonl --output $RUNS/$RUN/eval          # base vs fine-tuned on held-out 1C code
Your own 1C configuration: docs/1c-data.md (harvest -> prepare -> train -> merge -> eval).
TEXT
