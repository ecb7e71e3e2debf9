#!/usr/bin/env bash
# SDXL base throughput on 8 devices, fp16: 1500 steps.
# Arguments and output: see test/_common.sh (--tiny runs offline on the built-in tiny model).
NETWORK=sdxl_fp16 SCRIPT=examples/text_to_image/train_text_to_image_sdxl.py MODEL_NAME=stabilityai/stable-diffusion-xl-base-1.0 TINY_KIND=sdxl
BATCH_SIZE=4 MAX_TRAIN_STEPS=1500 MIXED_PRECISION=fp16 RESOLUTION=1024 NPROC=8
source "$(dirname "$0")/_common.sh" "$@"
run_training 
