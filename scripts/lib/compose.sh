# shellcheck shell=bash
# Shared by scripts/*.sh: the project's Python, the runs and models folders, the base checkpoint the quickstart
# fine-tunes, and (for scripts/train_*.sh) the workspace's defaults composed into `rwkv1c train` with a profile.
#
# The settings live in configs/ and are read by rwkv1c.config (their one home); this file only turns
# the workspace's choices into the default --model and --data, then hands every flag the caller gave to
# `rwkv1c train`, after the defaults, so the caller's flags win:
#
#   configs/workspace.env      MODEL_PRESET, MODELS_DIR, DATA_DIR, RUNS_DIR, NUM_GPUS
#   configs/model/<preset>.env CHECKPOINT (the base file), CTX_LEN and LR (read by `rwkv1c train`)
#   configs/profile/<name>.env quantisation, LoRA rank, batch, ... (read by `rwkv1c train`)
#
# Source it from the repository root (the scripts cd there first); rwkv1c_python works from anywhere.

RWKV1C_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

rwkv1c_python() {
    # The project's virtual environment when there is one (scripts/bootstrap.sh makes it), else python3.
    if [ -x "$RWKV1C_ROOT/.venv/bin/python" ]; then
        echo "$RWKV1C_ROOT/.venv/bin/python"
    else
        echo python3
    fi
}

rwkv1c_runs_dir() {
    # Where `rwkv1c train` writes runs: RUNS_DIR of configs/workspace.env.
    "$(rwkv1c_python)" -c '
from rwkv1c.config import load_workspace, output_folder, workspace_root
root = workspace_root()
print(output_folder(root, load_workspace(root).runs_dir))
'
}

# The quickstart's own tiny random model (in MODELS_DIR); never taken for a real base checkpoint.
RWKV1C_QUICKSTART_TINY=quickstart-tiny.pth

rwkv1c_models_dir() {
    # Where base checkpoints live: MODELS_DIR of configs/workspace.env (where `rwkv1c download` writes).
    "$(rwkv1c_python)" -c '
from rwkv1c.config import load_workspace, output_folder, workspace_root
root = workspace_root()
print(output_folder(root, load_workspace(root).models_dir))
'
}

rwkv1c_real_base() {
    # A real base checkpoint in MODELS_DIR: the MODEL_PRESET's file when it is there, else the smallest other
    # .pth (the quickest to fine-tune); never the quickstart's tiny model. Prints nothing when there is none.
    "$(rwkv1c_python)" - "$RWKV1C_QUICKSTART_TINY" <<'PY'
import sys

from rwkv1c.config import load_preset, load_workspace, output_folder, workspace_root
from rwkv1c.errors import UserError

try:
    root = workspace_root()
    ws = load_workspace(root)
    preset = load_preset(ws.model_preset, root)
except UserError as exc:
    sys.exit(f"quickstart: {exc}")
folder = output_folder(root, ws.models_dir)
own = folder / (preset.checkpoint or preset.name + ".pth")
others = sorted(
    (p for p in folder.glob("*.pth") if p.name != sys.argv[1] and p != own and p.is_file()),
    key=lambda p: p.stat().st_size,
)
found = [own] if own.is_file() else others
if found:
    print(found[0])
PY
}

train_with_profile() {
    local profile="$1"
    shift
    local python_bin
    python_bin="$(rwkv1c_python)"

    # 1. --resume: the run folder already names its base and data; pass nothing else.
    local arg
    for arg in "$@"; do
        if [ "$arg" = "--resume" ]; then
            exec "$python_bin" -m rwkv1c train --profile "$profile" "$@"
        fi
    done

    # 2. Defaults: the preset's checkpoint in MODELS_DIR, and DATA_DIR/train (from `rwkv1c prepare ... --output data/train`).
    local defaults model data
    defaults="$("$python_bin" -c '
from rwkv1c.config import load_preset, load_workspace, workspace_root
root = workspace_root()
ws = load_workspace(root)
preset = load_preset(ws.model_preset, root)
print(root / ws.models_dir / (preset.checkpoint or (preset.name + ".pth")))
print(root / ws.data_dir / "train")
')"
    model="$(echo "$defaults" | sed -n 1p)"
    data="$(echo "$defaults" | sed -n 2p)"

    # 3. A missing default base gets its fix named here (a --model given by the caller is checked by the command).
    local given_model=no
    for arg in "$@"; do
        case "$arg" in --model | --model=*) given_model=yes ;; esac
    done
    if [ "$given_model" = no ] && [ ! -f "$model" ]; then
        echo "train: the base checkpoint $model is not there yet: run scripts/download_model.sh first," >&2
        echo "       or pass --model PATH.pth (MODEL_PRESET in configs/workspace.env picks the default)" >&2
        exit 1
    fi

    # 4. Train. Later flags override earlier ones, so the caller's --data / --model / --run ... win.
    exec "$python_bin" -m rwkv1c train --model "$model" --data "$data" --profile "$profile" "$@"
}
