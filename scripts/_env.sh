# Sourced by the README commands: make (once) and activate a venv with CPU torch and this package.
# Idempotent; a fresh machine needs only Python 3 and PyPI. Override PYTHON, VENV or TORCH_VERSION.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV=${VENV:-.venv}
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
# Reinstall only when pyproject.toml changed since the last install into this venv.
stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  # torch first and pinned: the CPU build; an unpinned torch would pull a multi-GB CUDA build.
  python -m pip install -q "torch==${TORCH_VERSION:-2.13.0}"
  python -m pip install -q -e ".[test]"
  # Only for the CLIP BPE vocabulary file inside it (the offline tokenizer); never imported, so no deps.
  python -m pip install -q --no-deps open_clip_torch
  touch "$stamp"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
