#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with flyweight and its dependencies.
# Idempotent: a second run only checks.
#
# torch: installs `torch==2.13.0` with pip's configuration as it is. That is PyTorch's CPU build only
# where pip is set up to find a CPU wheel first (as on the project's CI machines, which keep one on
# local disk); on Linux, PyPI's default torch wheel is the CUDA build (large downloads). For the CPU
# build elsewhere, point FLYWEIGHT_TORCH at PyTorch's CPU wheel index, e.g.
#   FLYWEIGHT_TORCH="torch==2.13.0 --index-url <PyTorch CPU wheel index>" bash scripts/setup.sh
# An existing torch in .venv is kept.
#
# Versions: requirements-lock.txt holds the exact versions CI tested (pip freeze of CI's .venv) and is
# used as a constraints file, so a fresh setup gets the same environment; FLYWEIGHT_NO_LOCK=1 resolves
# the ranges in pyproject.toml instead (newest compatible versions). Override the interpreter with
# PYTHON=...
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOCK=requirements-lock.txt
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
CONSTRAINTS=()
if [ "${FLYWEIGHT_NO_LOCK:-0}" != 1 ] && [ -f "$LOCK" ]; then
    CONSTRAINTS=(-c "$LOCK")
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] installing ${FLYWEIGHT_TORCH:-torch==2.13.0}"
    # shellcheck disable=SC2086  # FLYWEIGHT_TORCH may carry pip options (--index-url ...)
    "${PIP[@]}" install ${FLYWEIGHT_TORCH:-torch==2.13.0}
fi
if ! .venv/bin/python -c "import flyweight, pytest, xdist" 2>/dev/null || [ pyproject.toml -nt .venv/.flyweight-installed ] \
        || { [ -f "$LOCK" ] && [ "$LOCK" -nt .venv/.flyweight-installed ]; }; then
    if [ ${#CONSTRAINTS[@]} -gt 0 ]; then
        echo "[setup] installing flyweight (editable) and its dependencies at the versions in $LOCK"
    else
        echo "[setup] installing flyweight (editable) and its dependencies (no lock: newest compatible)"
    fi
    "${PIP[@]}" install -e ".[dev]" ${CONSTRAINTS[@]+"${CONSTRAINTS[@]}"}
    touch .venv/.flyweight-installed
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, flyweight; print(f"flyweight {flyweight.__version__}, torch {torch.__version__}")')"
