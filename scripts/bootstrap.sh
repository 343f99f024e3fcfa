#!/usr/bin/env bash
# Create .venv and install rwkv1c with pinned dependencies. Safe to run again: it only installs what changed.
#
#   ./scripts/bootstrap.sh          # runtime only
#   ./scripts/bootstrap.sh --dev    # plus test tools (pytest, ruff, the `rwkv` reference package, openai client)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EXTRAS=""
for arg in "$@"; do
  case "$arg" in
    --dev) EXTRAS="dev" ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown argument '$arg' (use --dev)" >&2; exit 2 ;;
  esac
done

# 1. Settings: configs/workspace.env when present (copied from the committed example).
setting() {  # setting KEY DEFAULT -> value from configs/workspace.env, else DEFAULT
  local file=configs/workspace.env value
  if [[ -f "$file" ]] && value=$(grep -E "^$1=" "$file" | tail -n 1 | cut -d= -f2-); then
    value="${value%\"}"; value="${value#\"}"
    printf '%s' "$value"
  else
    printf '%s' "$2"
  fi
}
TORCH_VERSION=$(setting TORCH_VERSION 2.13.0)

# 2. Python >= 3.10 and the virtual environment.
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "bootstrap: Python 3.10 or newer is needed (found: $("$PYTHON" --version 2>&1 || echo none))." >&2
  echo "  On Ubuntu/WSL: sudo apt install python3 python3-venv" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# 3. Which torch wheel index: set explicitly in workspace.env, or chosen from the GPU that nvidia-smi lists
#    (also /usr/lib/wsl/lib/nvidia-smi under WSL2). The rule lives in rwkv1c.machine.doctor.torch_index_choice, for
#    torch 2.12+: Turing..Blackwell (RTX 20xx-50xx) with driver 580+ -> cu130; older cards or drivers -> cu126;
#    no NVIDIA GPU -> plain PyPI.
if [[ -f configs/workspace.env ]] && grep -qE '^TORCH_INDEX_URL=' configs/workspace.env; then
  TORCH_INDEX_URL=$(setting TORCH_INDEX_URL "")
  INDEX_REASON="TORCH_INDEX_URL in configs/workspace.env"
else
  CHOICE=$(PYTHONPATH=src .venv/bin/python -c 'from rwkv1c.machine.doctor import print_torch_index; print_torch_index()')
  TORCH_INDEX_URL=${CHOICE%%$'\t'*}
  INDEX_REASON=${CHOICE#*$'\t'}
fi
echo "bootstrap: torch wheel index: ${TORCH_INDEX_URL:-PyPI} ($INDEX_REASON)"
# A build-specific index gets the build's local version (torch==2.13.0+cu130): a plain ==2.13.0 would accept
# the CPU build already installed and never switch to the CUDA one.
TORCH_SPEC="torch==$TORCH_VERSION"
if [[ "$TORCH_INDEX_URL" =~ /whl/(cpu|cu[0-9]+)/?$ ]]; then
  TORCH_SPEC="torch==$TORCH_VERSION+${BASH_REMATCH[1]}"
fi

# 4. Skip the install when nothing changed since the last successful one.
STAMP=.venv/.rwkv1c-bootstrap
WANT=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)"|$TORCH_SPEC|$TORCH_INDEX_URL|$EXTRAS"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "bootstrap: .venv is up to date ($TORCH_SPEC; nothing to install)"
  exit 0
fi

# 5. torch first, from the chosen index; then everything else pinned by constraints.txt.
echo "bootstrap: installing $TORCH_SPEC from ${TORCH_INDEX_URL:-PyPI}"
if [[ -n "$TORCH_INDEX_URL" ]]; then
  "${PIP[@]}" install -q "$TORCH_SPEC" --index-url "$TORCH_INDEX_URL" --extra-index-url https://pypi.org/simple
else
  "${PIP[@]}" install -q "$TORCH_SPEC"
fi
TARGET="."
[[ -n "$EXTRAS" ]] && TARGET=".[$EXTRAS]"
echo "bootstrap: installing rwkv1c${EXTRAS:+ [$EXTRAS]} with pinned dependencies"
"${PIP[@]}" install -q -c constraints.txt -e "$TARGET"
echo "$WANT" > "$STAMP"
echo "bootstrap: done. Activate with: source .venv/bin/activate   (or call .venv/bin/rwkv1c)"
