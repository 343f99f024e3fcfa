#!/usr/bin/env bash
# Set up .venv (with test tools) and run the linters and the test suite.
#   ./scripts/test.sh                 # everything that can run here (GPU tests skip with a reason)
#   ./scripts/test.sh -m "not slow"   # the quick part: extra arguments go to pytest
#   ./scripts/test.sh -m gpu          # the GPU tests (bootstrap installs the GPU kernels on a machine with a GPU)
#   ./scripts/test.sh -k tokenizer
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

./scripts/bootstrap.sh --dev

echo "test: ruff check, ruff format --check, mypy"
.venv/bin/ruff check src tests bench scripts
.venv/bin/ruff format --check src tests bench scripts
.venv/bin/mypy src

echo "test: pytest"
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [[ $status -eq 5 ]]; then
  echo "test: pytest collected no tests: treating as a failure" >&2
  exit 1
fi
exit $status
