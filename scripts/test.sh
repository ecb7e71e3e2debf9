#!/usr/bin/env bash
# README command 2: set up (once) and run the whole test suite on CPU, offline.
source "$(dirname "$0")/_env.sh"
python -m pytest -q -p no:cacheprovider "$@"
