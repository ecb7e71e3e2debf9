#!/usr/bin/env bash
# FLUX.1-dev DreamBooth LoRA on 1 device, bf16 + NPU flash attention (mindone README_flux.md command).
# Arguments and output: see test/_common.sh; --data_path=DIR is the folder of subject images (--tiny: shapes).
NETWORK=flux_dreambooth_lora_bf16 SCRIPT=examples/dreambooth/train_dreambooth_lora_flux.py MODEL_NAME=black-forest-labs/FLUX.1-dev TINY_KIND=flux ATTENTION=npu_fa
BATCH_SIZE=1 MAX_TRAIN_STEPS=500 MIXED_PRECISION=bf16 RESOLUTION=512 NPROC=1
source "$(dirname "$0")/_common.sh" "$@"
run_training --instance_prompt "a photo of sks dog" --guidance_scale 1 --gradient_accumulation_steps 4 --learning_rate 1e-4 --rank 4
