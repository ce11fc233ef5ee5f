#!/usr/bin/env bash
# P-tuning v2 of ChatGLM2-6B on PromptCBLUE (the original ptuning/train.sh, with settings from
# the environment and extra arguments forwarded to main.py; the last value of a flag wins).
#
#   MODEL=/path/to/chatglm2-6b bash train.sh            # a downloaded THUDM/chatglm2-6b folder
#   MODEL=/path/to/chatglm2-6b NUM_GPUS=4 bash train.sh  # torchrun DDP on 4 GPUs
#   bash train.sh                                        # no MODEL: the embedded tiny model, on CPU
#   bash train.sh --max_steps 50 --learning_rate 1e-2   # any main.py flag overrides the defaults
#   FRESH=1 bash train.sh                                # start over (default: resume the run's newest checkpoint)
#   EVAL_STEPS=200 bash train.sh --save_steps 200        # the official dev score every 200 steps (default: at each
#                                                        # checkpoint; 0: none); the best checkpoint is kept and used
#   TASK_SAMPLING=uniform bash train.sh                  # records drawn by task: temperature:2 (default), uniform,
#                                                        # proportional, temperature:T, none (plain shuffling)
#   LORA_RANK=8 bash train.sh  (or METHOD=lora)          # LoRA adapters (PEFT) instead of a prefix
#   METHOD=full ENGINE=fsdp NUM_GPUS=4 bash train.sh     # full fine-tuning, sharded (FSDP2 or DeepSpeed)
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 NUM_GPUS=8 bash train.sh   # on each node (NODE_RANK 0, 1)
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"

NUM_GPUS=${NUM_GPUS:-1}  # processes on this node
NNODES=${NNODES:-1}
LAUNCH=(python3 main.py)  # one process: plain python, so an error is main.py's one line
if [ "$NNODES" -gt 1 ]; then  # run this on every node, NODE_RANK 0..NNODES-1, MASTER_ADDR = node 0
  LAUNCH=(torchrun --nnodes="$NNODES" --node_rank="${NODE_RANK:?set NODE_RANK (0 on the master node)}"
          --nproc-per-node="$NUM_GPUS" --master_addr="${MASTER_ADDR:?set MASTER_ADDR (node 0)}"
          --master_port="${MASTER_PORT:-29500}" main.py)
elif [ "$NUM_GPUS" -gt 1 ]; then
  LAUNCH=(torchrun --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" main.py)
fi
DATA=${DATA:-PromptCBLUE}
# An interrupted run started again resumes from its newest complete checkpoint; FRESH=1 starts over.
FRESH_ARGS=(); [ -n "${FRESH:-}" ] && [ "$FRESH" != 0 ] && FRESH_ARGS=(--overwrite_output_dir)
METHOD=${METHOD:-$([ -n "${LORA_RANK:-}" ] && echo lora || echo ptuning)}
case "$METHOD" in
  ptuning) PRE_SEQ_LEN=${PRE_SEQ_LEN:-128}; TUNE=(--pre_seq_len "$PRE_SEQ_LEN"); TAG=pt-$PRE_SEQ_LEN ;;
  lora) LORA_RANK=${LORA_RANK:-8}; TUNE=(--lora_rank "$LORA_RANK"); TAG=lora-$LORA_RANK ;;
  full)  # the whole model trains, sharded: ENGINE=fsdp (default) or deepspeed (ZERO_STAGE 2|3, CUDA only)
    case "${ENGINE:-fsdp}" in
      fsdp) TAG=full-fsdp; TUNE=(--fsdp "full_shard auto_wrap" --fsdp_config configs/fsdp.json)
            if [ "$((NUM_GPUS * NNODES))" -eq 1 ]; then  # one process has nothing to shard
              echo "train.sh: METHOD=full with one process: unsharded (NUM_GPUS > 1 shards with FSDP)" >&2; TUNE=()
            fi ;;
      deepspeed) TUNE=(--deepspeed "configs/ds_zero${ZERO_STAGE:-3}.json"); TAG=full-zero${ZERO_STAGE:-3} ;;
      none) TUNE=(); TAG=full ;;
      *) echo "train.sh: ENGINE must be fsdp, deepspeed or none, not '$ENGINE'" >&2; exit 2 ;;
    esac ;;
  *) echo "train.sh: METHOD must be ptuning, lora or full, not '$METHOD'" >&2; exit 2 ;;
esac

if [ -z "${MODEL:-}" ]; then
  # The embedded default: built once under output/ (cached), then P-tuned in a few minutes on 2 CPU
  # cores. A small chat model: pre-trained on each record as one text, then a short chat stage on
  # long, chatty answers to questions in other wordings (PromptCBLUE/chat.json), which also teaches
  # a brevity instruction; so it answers PromptCBLUE prompts at length until tuned (BENCHMARKS.md,
  # "The demo's base"). Key/value heads 8: a wider prefix per layer than the 6B's GQA 2 of 32.
  MODEL=$(python -m chatglm.tiny --train_file "$DATA/train.json" --out output/tiny-chatglm2 \
            --pretrain_steps ${PRETRAIN_STEPS:-300} --documents paired --shape num_key_value_heads=8 \
            --chat_file "${CHAT_FILE:-PromptCBLUE/chat.json}" --chat_steps ${CHAT_STEPS:-200} \
            --terse_cue "请简要回答：" | tail -n 1)
  case "$METHOD" in lora) LR=${LR:-2e-3} ;; full) LR=${LR:-5e-4} ;; *) LR=${LR:-1e-1} ;; esac
  RUN=${RUN:-tiny-chatglm2-$TAG-$LR}
  SAVE_STEPS=${SAVE_STEPS:-400}
  DEFAULTS=(--max_source_length 128 --max_target_length 96 --per_device_train_batch_size 8
            --gradient_accumulation_steps 1 --max_steps ${MAX_STEPS:-800} --logging_steps 20 --save_steps $SAVE_STEPS
            --dataloader_num_workers 0)
  echo "train.sh: no MODEL given; tuning ($METHOD) the embedded tiny ChatGLM2 in $MODEL on $DATA/train.json (CPU)."
else
  case "$METHOD" in lora) LR=${LR:-2e-4} ;; full) LR=${LR:-1e-4} ;; *) LR=${LR:-2e-2} ;; esac
  RUN=${RUN:-promptcblue-$(basename "$MODEL")-$TAG-$LR}
  SAVE_STEPS=${SAVE_STEPS:-1000}
  DEFAULTS=(--max_source_length ${MAX_SOURCE_LENGTH:-700} --max_target_length ${MAX_TARGET_LENGTH:-196}
            --per_device_train_batch_size ${BATCH_SIZE:-1} --gradient_accumulation_steps ${GRAD_ACCUM:-16}
            --max_steps ${MAX_STEPS:-3000} --logging_steps 10 --save_steps $SAVE_STEPS
            --max_eval_samples ${EVAL_SAMPLES:-320})
fi
# The official dev score at every checkpoint (or every EVAL_STEPS; 0: none), and the best
# checkpoint by it kept, named in trainer_state.json and loaded at the end.
SHARDED=$(printf '%s\n' "${TUNE[@]}" | grep -E -c -- '^--fsdp$|ds_zero3' || true)
if [ "$SHARDED" != 0 ] && [ -z "${EVAL_STEPS:-}" ]; then
  # Generating on sharded weights (FSDP, ZeRO-3) is not done during training: score the checkpoints after.
  EVAL_STEPS=0; echo "train.sh: sharded weights: no official score during training; evaluate the checkpoints with evaluate.sh" >&2
fi
case "${EVAL_STEPS:-}" in
  0) EVAL=() ;;
  "") EVAL=(--do_eval --eval_strategy steps --load_best_model_at_end) ;;  # at each --save_steps
  *) EVAL=(--do_eval --eval_steps "$EVAL_STEPS" --load_best_model_at_end) ;;
esac

# Training records drawn by task, weights n^(1/2) (n: the task's records): on the real
# PromptCBLUE training file it scored above plain shuffling at every evaluation (BENCHMARKS.md).
# TASK_SAMPLING=none: plain shuffling, as the original; proportional, uniform, temperature:T.
SAMPLING=(); [ "${TASK_SAMPLING:-temperature:2}" != none ] && SAMPLING=(--task_sampling "${TASK_SAMPLING:-temperature:2}")

"${LAUNCH[@]}" \
    --do_train \
    --train_file "$DATA/train.json" \
    --validation_file "$DATA/dev.json" \
    --preprocessing_num_workers ${PREPROCESSING_WORKERS:-2} \
    --prompt_column input \
    --response_column target \
    --overwrite_cache \
    --model_name_or_path "$MODEL" \
    --output_dir "output/$RUN" \
    "${FRESH_ARGS[@]}" \
    --per_device_eval_batch_size 16 \
    --predict_with_generate \
    --learning_rate "$LR" \
    --print_memory_estimate \
    "${TUNE[@]}" \
    "${DEFAULTS[@]}" \
    "${EVAL[@]}" \
    "${SAMPLING[@]}" \
    "$@"

echo "train.sh: done. Checkpoints ($METHOD): output/$RUN/checkpoint-*; loss curve: output/$RUN/loss_curve.png"
[ -f "output/$RUN/score_curve.png" ] && echo "train.sh: official dev score per evaluation: output/$RUN/score_curve.png, eval-*/scores.json and error_report.md; best: $(python3 -m chatglm.checkpoint "output/$RUN")"
echo "train.sh: evaluate with: $([ "$METHOD" = lora ] && echo "METHOD=lora ")bash evaluate.sh"
