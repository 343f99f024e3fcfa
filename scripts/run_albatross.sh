#!/usr/bin/env bash
# The old inference shortcut, kept for existing users: runs scripts/infer_albatross.py, which is now a
# thin wrapper of the rwkv1c engine (nothing is cloned or compiled).
#
#   ./scripts/run_albatross.sh --model models/base/rwkv7-g1-1.5b.pth --prompt "User: hi" --tokens 64
#   ALBATROSS_MODEL=models/base/rwkv7-g1-1.5b.pth ./scripts/run_albatross.sh --batch 4
#
# Defaults come from ALBATROSS_MODEL, ALBATROSS_PROMPT, ALBATROSS_TOKENS, ALBATROSS_BATCH (as before);
# any other argument (--temperature 0.9, --noise 1, --adapter DIR, ...) is passed on unchanged.
# New work: use `rwkv1c generate`, `rwkv1c chat` or `rwkv1c serve` (docs/inference.md).
set -euo pipefail

ROOT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# 1. the settings, from the environment or the old defaults
MODEL="${ALBATROSS_MODEL:-}"
PROMPT="${ALBATROSS_PROMPT:-User: explain recursion in Python.

Assistant:}"
TOKENS="${ALBATROSS_TOKENS:-128}"
BATCH="${ALBATROSS_BATCH:-1}"
EXTRA_ARGS=()

# 2. the command line overrides them
while [ "$#" -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --prompt) PROMPT="$2"; shift 2 ;;
    --tokens) TOKENS="$2"; shift 2 ;;
    --batch) BATCH="$2"; shift 2 ;;
    -h|--help) sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) EXTRA_ARGS+=("$1"); shift ;;
  esac
done

if [ -z "$MODEL" ]; then
  echo "run_albatross.sh: pass --model PATH.pth or set ALBATROSS_MODEL" >&2
  exit 1
fi

# 3. run, with the project's Python (the .venv when there is one)
source "$ROOT_DIR/scripts/lib/compose.sh"
exec "$(rwkv1c_python)" "$ROOT_DIR/scripts/infer_albatross.py" \
  --model "$MODEL" --prompt "$PROMPT" --tokens "$TOKENS" --batch "$BATCH" ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
