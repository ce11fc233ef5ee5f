#!/usr/bin/env bash
# P-tuning v2 of ChatGLM2-6B on PromptCBLUE (the original ptuning/train.sh, with settings from
# the environment and extra arguments forwarded to main.py; the last value of a flag wins).
#
#   MODEL=/path/to/chatglm2-6b bash train.sh            # a downloaded THUDM/chatglm2-6b folder
#   MODEL=/path/to/chatglm2-6b NUM_GPUS=4 bash train.sh  # torchrun DDP on 4 GPUs
#   bash train.sh                                        # no MODEL: the embedded tiny model, on CPU
#   bash train.sh --max_steps 50 --learning_rate 1e-2   # any main.py flag overrides the defaults
#   LORA_RANK=8 bash train.sh  (or METHOD=lora)          # LoRA adapters (PEFT) instead of a prefix
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"

NUM_GPUS=${NUM_GPUS:-1}
LAUNCH=(python3 main.py)  # one process: plain python, so an error is main.py's one line
[ "$NUM_GPUS" -gt 1 ] && LAUNCH=(torchrun --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" main.py)
DATA=${DATA:-PromptCBLUE}
METHOD=${METHOD:-$([ -n "${LORA_RANK:-}" ] && echo lora || echo ptuning)}
case "$METHOD" in
  ptuning) PRE_SEQ_LEN=${PRE_SEQ_LEN:-128}; TUNE=(--pre_seq_len "$PRE_SEQ_LEN"); TAG=pt-$PRE_SEQ_LEN ;;
  lora) LORA_RANK=${LORA_RANK:-8}; TUNE=(--lora_rank "$LORA_RANK"); TAG=lora-$LORA_RANK ;;
  *) echo "train.sh: METHOD must be ptuning or lora, not '$METHOD'" >&2; exit 2 ;;
esac

if [ -z "${MODEL:-}" ]; then
  # The embedded default: built once under output/, then P-tuned in a few minutes on 2 CPU cores.
  # Random weights, then a short causal-LM pre-training on the texts (cached once built).
  MODEL=$(python -m glm2.tiny --train_file "$DATA/train.json" --out output/tiny-chatglm2 \
            --pretrain_steps ${PRETRAIN_STEPS:-600} | tail -n 1)
  [ "$METHOD" = lora ] && LR=${LR:-2e-3} || LR=${LR:-3e-2}
  RUN=${RUN:-tiny-chatglm2-$TAG-$LR}
  DEFAULTS=(--max_source_length 128 --max_target_length 64 --per_device_train_batch_size 8
            --gradient_accumulation_steps 1 --max_steps ${MAX_STEPS:-1600} --logging_steps 20 --save_steps 400
            --dataloader_num_workers 0)
  echo "train.sh: no MODEL given; tuning ($METHOD) the embedded tiny ChatGLM2 in $MODEL on $DATA/train.json (CPU)."
else
  [ "$METHOD" = lora ] && LR=${LR:-2e-4} || LR=${LR:-2e-2}
  RUN=${RUN:-promptcblue-chatglm2-6b-$TAG-$LR}
  DEFAULTS=(--max_source_length ${MAX_SOURCE_LENGTH:-700} --max_target_length ${MAX_TARGET_LENGTH:-196}
            --per_device_train_batch_size ${BATCH_SIZE:-1} --gradient_accumulation_steps ${GRAD_ACCUM:-16}
            --max_steps ${MAX_STEPS:-3000} --logging_steps 10 --save_steps ${SAVE_STEPS:-1000})
fi

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
    --overwrite_output_dir \
    --per_device_eval_batch_size 16 \
    --predict_with_generate \
    --learning_rate "$LR" \
    "${TUNE[@]}" \
    "${DEFAULTS[@]}" \
    "$@"

echo "train.sh: done. Checkpoints ($METHOD): output/$RUN/checkpoint-*; loss curve: output/$RUN/loss_curve.png"
echo "train.sh: evaluate with: $([ "$METHOD" = lora ] && echo "METHOD=lora ")bash evaluate.sh"
