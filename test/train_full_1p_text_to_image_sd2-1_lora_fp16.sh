#!/usr/bin/env bash
# LoRA (rank 16) on SD2.1, 1 device, fp16 (ModelZoo-new name).
# Arguments and output: see test/_common.sh (--tiny runs offline on the built-in tiny model).
NETWORK=sd2-1_lora_fp16 SCRIPT=examples/text_to_image/train_text_to_image_lora.py MODEL_NAME=stabilityai/stable-diffusion-2-1 TINY_KIND=sd21
BATCH_SIZE=1 MAX_TRAIN_STEPS=1000 MIXED_PRECISION=fp16 RESOLUTION=512 NPROC=1
source "$(dirname "$0")/_common.sh" "$@"
run_training --rank 16
