#!/usr/bin/env bash
# README command 1: set up (once), then train the built-in tiny model on generated shapes and sample from it.
# Offline, CPU. Arguments go to `python -m diffusers_npu.quickstart` (--output_dir, --steps, ...).
source "$(dirname "$0")/_env.sh"
python -m diffusers_npu.quickstart "$@"
