#!/usr/bin/env bash
# SDXL LoRA on 8 device(s), fp32 (ModelZoo diffusers0.21.0 name).
# Arguments and output: see test/_common.sh (--tiny runs offline on the built-in tiny model).
NETWORK=sdxl_lora_fp32 SCRIPT=examples/text_to_image/train_text_to_image_lora_sdxl.py MODEL_NAME=stabilityai/stable-diffusion-xl-base-1.0 TINY_KIND=sdxl
BATCH_SIZE=1 MAX_TRAIN_STEPS=15000 MIXED_PRECISION=no RESOLUTION=1024 NPROC=8
source "$(dirname "$0")/_common.sh" "$@"
run_training --rank 4
