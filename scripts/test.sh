#!/usr/bin/env bash
# README command 2: set up (once) and run the whole test suite on CPU, offline.
# LATEST=1: the same on the newest releases pyproject.toml allows; when it passes, constraints.txt is rewritten
# from that environment (review `git diff constraints.txt`, then commit it).
source "$(dirname "$0")/_env.sh"
python -m pytest -q -p no:cacheprovider "$@"
if [ "$LATEST" = 1 ] && [ $# -eq 0 ]; then
  python scripts/refresh_constraints.py constraints.txt
  git diff --stat -- constraints.txt 2>/dev/null || true
fi
