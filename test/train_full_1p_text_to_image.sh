#!/usr/bin/env bash
# Full fine-tune of SD1.4 on 1 device, fp32 (ModelZoo train_full_1p_text_to_image.sh).
# Arguments and output: see test/_common.sh (--tiny runs offline on the built-in tiny model).
NETWORK=sd1-4_fp32 SCRIPT=examples/text_to_image/train_text_to_image.py MODEL_NAME=CompVis/stable-diffusion-v1-4 TINY_KIND=sd15
BATCH_SIZE=1 MAX_TRAIN_STEPS=15000 MIXED_PRECISION=no RESOLUTION=512 NPROC=1
source "$(dirname "$0")/_common.sh" "$@"
run_training --use_ema
