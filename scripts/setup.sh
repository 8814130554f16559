#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with flyweight and its dependencies.
# Idempotent: a second run only checks. Override the interpreter with PYTHON=..., and the torch
# requirement with FLYWEIGHT_TORCH=... (default: the CPU build torch==2.13.0 when no torch exists).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv with $($PYTHON --version)"
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    echo "[setup] installing ${FLYWEIGHT_TORCH:-torch==2.13.0}"
    "${PIP[@]}" install "${FLYWEIGHT_TORCH:-torch==2.13.0}"
fi
if ! .venv/bin/python -c "import flyweight, pytest, xdist" 2>/dev/null || [ pyproject.toml -nt .venv/.flyweight-installed ]; then
    echo "[setup] installing flyweight (editable) and its dependencies"
    "${PIP[@]}" install -e ".[dev]"
    touch .venv/.flyweight-installed
fi
echo "[setup] ready: $(.venv/bin/python -c 'import torch, flyweight; print(f"flyweight {flyweight.__version__}, torch {torch.__version__}")')"
