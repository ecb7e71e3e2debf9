#!/usr/bin/env bash
# SD2.1 on 8 devices, fp16 + NPU flash attention, batch 24, no EMA (ModelZoo name).
# Arguments and output: see test/_common.sh (--tiny runs offline on the built-in tiny model).
NETWORK=sd2-1_fp16_fa SCRIPT=examples/text_to_image/train_text_to_image.py MODEL_NAME=stabilityai/stable-diffusion-2-1 TINY_KIND=sd21 ATTENTION=npu_fa
BATCH_SIZE=24 MAX_TRAIN_STEPS=2000 MIXED_PRECISION=fp16 RESOLUTION=768 NPROC=8
source "$(dirname "$0")/_common.sh" "$@"
run_training --pin_memory --persistent_workers
