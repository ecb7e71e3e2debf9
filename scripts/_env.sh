# Sourced by the README commands: make (once) and activate a venv with CPU torch and this package.
# Idempotent; a fresh machine needs only Python 3 and PyPI. Override PYTHON, VENV or TORCH_VERSION.
#
# Versions: every package but torch is installed at the exact version in constraints.txt (the stack the suite
# last passed with), so every fresh machine gets the same one. LATEST=1 instead installs the newest releases
# pyproject.toml allows, into its own venv (.venv-latest), to find out whether the constraints can move:
# `LATEST=1 bash scripts/test.sh` rewrites constraints.txt from that venv when the suite passes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
LATEST=${LATEST:-0}
if [ "$LATEST" = 1 ]; then VENV=${VENV:-.venv-latest}; else VENV=${VENV:-.venv}; fi
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# torch pinned in the same command: the CPU build; an unpinned torch would pull a multi-GB CUDA build.
if [ "$LATEST" = 1 ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q --upgrade --upgrade-strategy eager "torch==$TORCH_VERSION" -e ".[test]"
else
  # Reinstall only when what decides the versions changed since the last install into this venv.
  stamp="$VENV/.installed-$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)-torch$TORCH_VERSION"
  if [ ! -f "$stamp" ]; then
    python -m pip install -q --upgrade pip
    python -m pip install -q -c constraints.txt "torch==$TORCH_VERSION" -e ".[test]"
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
