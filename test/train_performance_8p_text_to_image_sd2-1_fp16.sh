#!/usr/bin/env bash
# SD2.1 throughput run on 8 devices, fp16: 1500 steps (ModelZoo name).
# Arguments and output: see test/_common.sh (--tiny runs offline on the built-in tiny model).
NETWORK=sd2-1_fp16 SCRIPT=examples/text_to_image/train_text_to_image.py MODEL_NAME=stabilityai/stable-diffusion-2-1 TINY_KIND=sd21
BATCH_SIZE=4 MAX_TRAIN_STEPS=1500 MIXED_PRECISION=fp16 RESOLUTION=768 NPROC=8
source "$(dirname "$0")/_common.sh" "$@"
run_training --use_ema
