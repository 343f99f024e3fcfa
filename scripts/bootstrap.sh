#!/usr/bin/env bash
# Create .venv and install rwkv1c with pinned dependencies. Safe to run again: it only installs what changed.
#
#   ./scripts/bootstrap.sh          # runtime (with an NVIDIA GPU: the fast GPU kernels too)
#   ./scripts/bootstrap.sh --dev    # plus test tools (pytest, ruff, the `rwkv` reference package, openai client)
#
# Which torch build fits this GPU, driver and TORCH_VERSION is decided by `python -m rwkv1c.machine.nvidia`,
# which reads configs/workspace.env with the loader every rwkv1c command uses; this script runs the steps.
# It deletes nothing but a .venv that cannot work (and says so).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

EXTRAS=""
for arg in "$@"; do
  case "$arg" in
    --dev) EXTRAS="dev" ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "bootstrap: unknown argument '$arg' (use --dev)" >&2; exit 2 ;;
  esac
done

# 1. Python >= 3.10 to make the environment with.
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
  echo "bootstrap: Python 3.10 or newer is needed (found: $("$PYTHON" --version 2>&1 || echo none))." >&2
  echo "  On Ubuntu/WSL: sudo apt install python3 python3-venv" >&2
  exit 1
fi

# 2. The virtual environment. One that cannot work is made again: on Debian/Ubuntu without python3-venv,
#    `venv` writes bin/python and then fails at ensurepip, leaving a .venv without pip; its Python may also be
#    gone (the system Python it came from was upgraded) or older than 3.10.
VENV_PROBLEM=""
if [[ -e .venv || -L .venv ]]; then
  if [[ ! -x .venv/bin/python ]]; then
    VENV_PROBLEM="it has no bin/python"
  elif ! VENV_VERSION=$(.venv/bin/python -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null); then
    VENV_PROBLEM="its Python does not start (was the Python it was made from removed or upgraded?)"
  elif ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
    VENV_PROBLEM="its Python is $VENV_VERSION, older than 3.10"
  elif ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    VENV_PROBLEM="it has no pip (its creation stopped half-way, e.g. while python3-venv was missing)"
  fi
fi
if [[ -n "$VENV_PROBLEM" ]]; then
  echo "bootstrap: .venv cannot be used: $VENV_PROBLEM. Removing .venv (nothing else) and making it again." >&2
  rm -rf .venv
fi
if [[ ! -e .venv ]]; then
  echo "bootstrap: creating .venv with $("$PYTHON" --version 2>&1)"
  if ! "$PYTHON" -m venv .venv; then
    rm -rf .venv  # a half-made one would otherwise look usable to the next run
    PY_MINOR=$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    echo "bootstrap: could not create .venv (see above). On Debian/Ubuntu/WSL install the venv module:" >&2
    echo "  sudo apt install python3-venv   (or python$PY_MINOR-venv), then run this again" >&2
    exit 1
  fi
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check)

# 3. What to install: the torch build for this GPU, driver and TORCH_VERSION (or TORCH_INDEX_URL when
#    configs/workspace.env sets it), and whether the GPU extra goes in. The plan says why on stderr, and stops
#    with the fix when no torch build can run here (no wheel for the card, or a driver too old for it).
PLAN=$(PYTHONPATH=src .venv/bin/python -m rwkv1c.machine.nvidia)
plan() { sed -n "s/^$1=//p" <<<"$PLAN"; }
TORCH_SPEC=$(plan torch_spec)
TORCH_INDEX_URL=$(plan index_url)
GPU_CONSTRAINTS=$(plan gpu_constraints)
if [[ "$(plan gpu_extra)" == yes ]]; then
  EXTRAS="${EXTRAS:+$EXTRAS,}gpu"  # flash-linear-attention and Triton: the fast WKV kernels
fi

# 4. Skip the install when nothing changed since the last successful one.
STAMP=.venv/.rwkv1c-bootstrap
WANT=$(cat pyproject.toml constraints.txt constraints-gpu.txt | sha256sum | cut -c1-16)
WANT="$WANT|$TORCH_SPEC|$TORCH_INDEX_URL|$EXTRAS|$GPU_CONSTRAINTS"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "bootstrap: .venv is up to date ($TORCH_SPEC${EXTRAS:+, extras $EXTRAS}; nothing to install)"
  exit 0
fi

# 5. torch first, in two steps. The wheel alone comes from its build's index, given as an extra one; its
#    local version (+cpu, +cu130) matches only that build. Its dependencies (for CUDA builds the NVIDIA
#    libraries) then come from pip's own index (PyPI, or the mirror pip is set up with), so the build's index is
#    asked about one package only. Not quiet: the download is large and pip's progress shows it moving.
INDEX_ARGS=()
if [[ -n "$TORCH_INDEX_URL" ]]; then
  INDEX_ARGS=(--extra-index-url "$TORCH_INDEX_URL")
fi
echo "bootstrap: installing $TORCH_SPEC from ${TORCH_INDEX_URL:-PyPI} ($(plan download))"
"${PIP[@]}" install --no-deps "${INDEX_ARGS[@]}" "$TORCH_SPEC"
"${PIP[@]}" install -c constraints.txt "$TORCH_SPEC"

# 6. rwkv1c and the rest, pinned by constraints.txt (and constraints-gpu.txt for the GPU extra).
CONSTRAINTS=(-c constraints.txt)
if [[ -n "$GPU_CONSTRAINTS" ]]; then
  CONSTRAINTS+=(-c "$GPU_CONSTRAINTS")
fi
TARGET="."
[[ -n "$EXTRAS" ]] && TARGET=".[$EXTRAS]"
echo "bootstrap: installing rwkv1c${EXTRAS:+ [$EXTRAS]} with pinned dependencies"
"${PIP[@]}" install -q "${CONSTRAINTS[@]}" -e "$TARGET"
echo "$WANT" > "$STAMP"
echo "bootstrap: done. Check the machine with .venv/bin/rwkv1c doctor; activate with: source .venv/bin/activate"
