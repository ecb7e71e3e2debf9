# Shared body of the ModelZoo-named launchers in test/ (sourced, never run directly).
#
# A launcher sets its defaults (the reference launcher's: MODEL_NAME BATCH_SIZE MAX_TRAIN_STEPS MIXED_PRECISION
# RESOLUTION NPROC, plus NETWORK SCRIPT TINY_KIND and optionally ATTENTION OPTIMIZER EMA WORKERS), then sources
# this file with its arguments and calls `run_training [extra script flags]`.
#
# Arguments (all optional):
#   --data_path=DIR | --local_data_dir=DIR   local dataset (save_to_disk dir, parquet files, imagefolder)
#   --dataset_name=NAME                      hub dataset (default lambdalabs/pokemon-blip-captions, as the reference)
#   --model_path=DIR | --model_name=ID       model directory or hub id (default: the launcher's reference model)
#   --output_dir=DIR                         default test/output/<case name>; train.log and <case>.log go there
#   (each of these also as --flag VALUE)
#   --nproc=N                                processes per node; default min(launcher's NPROC, devices present)
#   --batch_size= --max_train_steps= --mixed_precision= --resolution=   as the reference launchers
#   --tiny                                   built-in tiny model + generated shapes dataset; offline, seconds
#   anything else (--flag=value or --flag)   passed to the training script unchanged
# Multi-node: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT (torchrun's meaning). PYTHON picks the interpreter.
# Ends with the script's summary line (loss= fps= step_time_s= ...) and the ModelZoo "Final ..." lines.
set -eo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CASE_FILE="$(basename "$0" .sh)"

USER_DATA="" USER_DATASET="" USER_MODEL="" USER_OUT="" USER_NPROC="" TINY=0 PASSTHROUGH=()
declare -A USER=()
die() { echo "error: $*" >&2; exit 2; }
ours='--data_path|--local_data_dir|--dataset_name|--model_path|--model_name|--output_dir|--nproc|--batch_size|--max_train_steps|--mixed_precision|--resolution'
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  arg="${args[i]}"
  if [[ $arg =~ ^($ours)$ ]]; then  # "--flag value" as well as "--flag=value"
    (( i + 1 < ${#args[@]} )) || die "$arg needs a value, e.g. $arg=VALUE"
    i=$((i + 1)); arg="$arg=${args[i]}"
  fi
  case "$arg" in
    --data_path=*|--local_data_dir=*) USER_DATA="${arg#*=}" ;;
    --dataset_name=*) USER_DATASET="${arg#*=}" ;;
    --model_path=*|--model_name=*) USER_MODEL="${arg#*=}" ;;
    --output_dir=*) USER_OUT="${arg#*=}" ;;
    --nproc=*) USER_NPROC="${arg#*=}" ;;
    --batch_size=*|--max_train_steps=*|--mixed_precision=*|--resolution=*) k="${arg%%=*}"; USER[${k#--}]="${arg#*=}" ;;
    --tiny) TINY=1 ;;
    -h|--help) sed -n '1,/^set -eo/p' "${BASH_SOURCE[0]}" | sed '$d'; exit 0 ;;
    *) PASSTHROUGH+=("$arg") ;;
  esac
done
for k in batch_size max_train_steps resolution; do
  [[ -z ${USER[$k]:-} || ${USER[$k]} =~ ^[1-9][0-9]*$ ]] || die "--$k=${USER[$k]} must be a positive integer"
done
[[ -z $USER_NPROC || $USER_NPROC =~ ^[1-9][0-9]*$ ]] || die "--nproc=$USER_NPROC must be a positive integer (processes per node)"

note() { echo "note: $*" >&2; }

# Ascend runtime settings of the reference's env_npu.sh; harmless elsewhere. CANN's own env script if present.
for env_script in /usr/local/Ascend/ascend-toolkit/set_env.sh /usr/local/Ascend/nnae/set_env.sh; do
  if [[ -f "$env_script" ]]; then source "$env_script"; break; fi
done
export TASK_QUEUE_ENABLE="${TASK_QUEUE_ENABLE:-1}" HCCL_CONNECT_TIMEOUT="${HCCL_CONNECT_TIMEOUT:-5400}"
export HCCL_WHITELIST_DISABLE="${HCCL_WHITELIST_DISABLE:-1}" ASCEND_DEVICE_ID="${ASCEND_DEVICE_ID:-0}"

resolve_settings() {
  if (( TINY )); then  # tiny defaults, unless given explicitly
    BATCH_SIZE=2 MAX_TRAIN_STEPS=4 RESOLUTION=32 WORKERS=0
  fi
  BATCH_SIZE="${USER[batch_size]:-$BATCH_SIZE}" MAX_TRAIN_STEPS="${USER[max_train_steps]:-$MAX_TRAIN_STEPS}"
  MIXED_PRECISION="${USER[mixed_precision]:-$MIXED_PRECISION}" RESOLUTION="${USER[resolution]:-$RESOLUTION}"
  # The device's defaults and what it cannot run (replaced, with a note on stderr) come from diffusers_npu.devices.
  # A launcher without ATTENTION keeps the reference's stock attention (sdpa); the *_fa launchers ask for npu_fa.
  read -r DEVICE_KIND DEVICE_COUNT ATTENTION OPTIMIZER MIXED_PRECISION < <("$PYTHON" -m diffusers_npu.devices \
    --mixed_precision "$MIXED_PRECISION" --attention "${ATTENTION:-sdpa}" ${OPTIMIZER:+--optimizer "$OPTIMIZER"})
  NPROC="${USER_NPROC:-$(( NPROC < DEVICE_COUNT ? NPROC : DEVICE_COUNT ))}"
  WORKERS="${WORKERS:-8}"
  CASE_NAME="${NETWORK}_bs${BATCH_SIZE}_${NPROC}p_$([[ $CASE_FILE == train_performance_* ]] && echo perf || echo acc)"
  OUTPUT_DIR="${USER_OUT:-$ROOT/test/output/$CASE_NAME}"
  mkdir -p "$OUTPUT_DIR"
}

resolve_data_and_model() {
  if (( TINY )); then
    MODEL="${USER_MODEL:-tiny:$TINY_KIND}"
    local data="$OUTPUT_DIR/data"  # generated once, reused by a rerun into the same output folder
    if [[ -z $USER_DATA && ! -f "$data/metadata.jsonl" ]]; then
      "$PYTHON" -m diffusers_npu.training.data shapes "$data" --num_images 16 --resolution 32 >/dev/null
    fi
    DATA_ARGS=(--train_data_dir "${USER_DATA:-$data}")
  else
    MODEL="${USER_MODEL:-$MODEL_NAME}"
    if [[ -n $USER_DATA ]]; then DATA_ARGS=(--train_data_dir "$USER_DATA"); else DATA_ARGS=(--dataset_name "${USER_DATASET:-lambdalabs/pokemon-blip-captions}"); fi
  fi
}

launcher() {  # torchrun for several processes or nodes, plain python for one
  if (( NPROC == 1 )) && [[ "${NNODES:-1}" == 1 ]]; then echo "$PYTHON"; return; fi
  if [[ "${NNODES:-1}" == 1 && -z "${MASTER_PORT:-}" ]]; then echo "$PYTHON -m torch.distributed.run --standalone --nproc_per_node $NPROC"; return; fi
  echo "$PYTHON -m torch.distributed.run --nnodes ${NNODES:-1} --node_rank ${NODE_RANK:-0} --master_addr ${MASTER_ADDR:-127.0.0.1} --master_port ${MASTER_PORT:-29500} --nproc_per_node $NPROC"
}

run_training() {
  resolve_settings
  resolve_data_and_model
  local log="$OUTPUT_DIR/train.log" start end
  echo "case $CASE_NAME on $DEVICE_KIND x$NPROC; log: $log"
  start=$(date +%s)
  # shellcheck disable=SC2046  # launcher() returns a command line to split
  $(launcher) "$ROOT/$SCRIPT" --pretrained_model_name_or_path "$MODEL" "${DATA_ARGS[@]}" --output_dir "$OUTPUT_DIR" \
    --train_batch_size "$BATCH_SIZE" --max_train_steps "$MAX_TRAIN_STEPS" --mixed_precision "$MIXED_PRECISION" \
    --resolution "$RESOLUTION" --optimizer "$OPTIMIZER" --attention "$ATTENTION" --dataloader_num_workers "$WORKERS" \
    --center_crop --random_flip --gradient_accumulation_steps 1 --gradient_checkpointing --learning_rate 1e-05 \
    --max_grad_norm 1 --lr_scheduler constant --lr_warmup_steps 0 --checkpointing_steps 3000 \
    "$@" "${PASSTHROUGH[@]}" 2>&1 | tee "$log"
  end=$(date +%s)
  local summary fps loss
  summary=$(grep '^loss=' "$log" | tail -1)
  fps=$(sed -n 's/.* fps=\([^ ]*\).*/\1/p' <<<"$summary") loss=$(sed -n 's/^loss=\([^ ]*\).*/\1/p' <<<"$summary")
  echo "Final Performance images/sec : $fps"
  echo "Final Train Loss : $loss"
  echo "E2E Training Duration sec : $((end - start))"
  printf 'Network = %s\nRankSize = %s\nBatchSize = %s\nDeviceType = %s\nCaseName = %s\nActualFPS = %s\nActualLoss = %s\nE2ETrainingTime = %s\n' \
    "$NETWORK" "$NPROC" "$BATCH_SIZE" "$DEVICE_KIND" "$CASE_NAME" "$fps" "$loss" "$((end - start))" > "$OUTPUT_DIR/$CASE_NAME.log"
}
