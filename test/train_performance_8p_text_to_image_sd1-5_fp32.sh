#!/usr/bin/env bash
# SD1.5 throughput run on 8 devices, fp32: 1500 steps (ModelZoo name).
# Arguments and output: see test/_common.sh (--tiny runs offline on the built-in tiny model).
NETWORK=sd1-5_fp32 SCRIPT=examples/text_to_image/train_text_to_image.py MODEL_NAME=runwayml/stable-diffusion-v1-5 TINY_KIND=sd15
BATCH_SIZE=1 MAX_TRAIN_STEPS=1500 MIXED_PRECISION=no RESOLUTION=512 NPROC=8
source "$(dirname "$0")/_common.sh" "$@"
run_training --use_ema
