#!/usr/bin/env bash
# Tokenise a JSONL file into a binidx dataset for training (PREFIX_text_document.bin/.idx, plus .mask
# for instruction data). A thin wrapper of `python -m rwkv1c prepare`; every option is that command's.
#
#   scripts/prepare_binidx.sh data/bsl.jsonl --output data/bsl
#   scripts/prepare_binidx.sh data/chat.jsonl --output data/chat --skip-bad --workers 2
#   scripts/prepare_binidx.sh --help
#
# Relative paths are taken from the repository root (the script runs there).
set -euo pipefail

usage() {
    echo "usage: scripts/prepare_binidx.sh INPUT.jsonl --output PREFIX [--skip-bad] [--workers N]" >&2
    echo "       (relative paths are taken from the repository root; --help lists every option)" >&2
}

# 1. Run from the repository root, whatever the caller's folder.
cd "$(dirname "$0")/.."

# 2. Arguments: at least the input file; a missing input is reported before Python starts.
if [ "$#" -eq 0 ]; then
    usage
    exit 2
fi
case "$1" in
    -h | --help) ;;
    -*)
        echo "prepare_binidx: the first argument must be the input JSONL file, got '$1'" >&2
        usage
        exit 2
        ;;
    *)
        if [ ! -f "$1" ]; then
            echo "prepare_binidx: input file not found: $1 (looked in $(pwd))" >&2
            exit 1
        fi
        ;;
esac

# 3. Tokenise with the project's Python; the command validates everything else and writes nothing on error.
source scripts/lib/compose.sh
exec "$(rwkv1c_python)" -m rwkv1c prepare "$@"
