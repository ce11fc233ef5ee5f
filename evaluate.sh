#!/usr/bin/env bash
# Evaluate a P-tuning checkpoint on PromptCBLUE: batched greedy generation, then the official
# PromptCBLUE post-processing and scores (the original ptuning/evaluate.sh, settings from the
# environment, extra arguments forwarded to main.py; the last value of a flag wins).
#
#   bash evaluate.sh                                   # embedded tiny model, its run's best checkpoint, dev.json
#   MODEL=/path/to/chatglm2-6b CHECKPOINT=promptcblue-chatglm2-6b-pt-128-2e-2 STEP=3000 bash evaluate.sh
#   TEST_FILE=PromptCBLUE/test.json bash evaluate.sh   # predict the test set (no targets: no scores)
#   COMPARE_BASE=1 bash evaluate.sh                    # also the base model without prefix, side by side
#   STEP=all bash evaluate.sh                          # every checkpoint of the run, in one pass (P-tuning)
#   STEP=1000,2000 bash evaluate.sh                    # these checkpoints, in one pass; each to its eval-STEP
#   METHOD=lora bash evaluate.sh                       # the run `LORA_RANK=8 bash train.sh` made
#   METHOD=full bash evaluate.sh                       # the run `METHOD=full bash train.sh` made
#   CONSTRAINED=0 bash evaluate.sh                     # free text, as the original (default: answers of
#                                                      # closed-set tasks constrained to what the parser accepts)
# CHECKPOINT names a run under output/ (any kind: prefix, LoRA adapter, full model; recognised by its files);
# without STEP its best checkpoint (recorded when training evaluated the official score), else its newest.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"

NUM_GPUS=${NUM_GPUS:-1}
LAUNCH=(python3 main.py)  # one process: plain python, so an error is main.py's one line
[ "$NUM_GPUS" -gt 1 ] && LAUNCH=(torchrun --standalone --nnodes=1 --nproc-per-node="$NUM_GPUS" main.py)
DATA=${DATA:-PromptCBLUE}
TEST_FILE=${TEST_FILE:-$DATA/dev.json}
METHOD=${METHOD:-$([ -n "${LORA_RANK:-}" ] && echo lora || echo ptuning)}
case "$METHOD" in  # the run name train.sh gave (or set CHECKPOINT)
  lora) TAG=lora-${LORA_RANK:-8} ;;
  full) [ "${ENGINE:-fsdp}" = deepspeed ] && TAG=full-zero${ZERO_STAGE:-3} || TAG=full-${ENGINE:-fsdp}
        [ "$TAG" = full-none ] && TAG=full ;;
  *) TAG=pt-${PRE_SEQ_LEN:-128} ;;
esac

if [ -z "${MODEL:-}" ]; then
  MODEL=output/tiny-chatglm2
  [ -f "$MODEL/config.json" ] || { echo "evaluate.sh: no MODEL given and $MODEL is not built; run 'bash train.sh' first." >&2; exit 1; }
  case "$METHOD" in lora) LR=${LR:-2e-3} ;; full) LR=${LR:-5e-4} ;; *) LR=${LR:-1e-1} ;; esac
  CHECKPOINT=${CHECKPOINT:-tiny-chatglm2-$TAG-$LR}
  BATCH=${BATCH:-16}
  DEFAULTS=(--max_source_length 128 --max_target_length 96)
else
  case "$METHOD" in lora) LR=${LR:-2e-4} ;; full) LR=${LR:-1e-4} ;; *) LR=${LR:-2e-2} ;; esac
  CHECKPOINT=${CHECKPOINT:-promptcblue-$(basename "$MODEL")-$TAG-$LR}
  BATCH=${BATCH:-16}
  DEFAULTS=(--max_source_length ${MAX_SOURCE_LENGTH:-700} --max_target_length ${MAX_TARGET_LENGTH:-196})
fi
if [ -z "${STEP:-}" ]; then  # the run's best checkpoint (by the official score) if it recorded one, else its newest
  FOUND=$(python3 -m chatglm.checkpoint "output/$CHECKPOINT") || {
    echo "evaluate.sh: no checkpoint in output/$CHECKPOINT; train first or set CHECKPOINT/STEP." >&2; exit 1; }
  STEP=${FOUND##*-}
fi
EXTRA=()
[ -n "${COMPARE_BASE:-}" ] && [ "${COMPARE_BASE}" != "0" ] && EXTRA+=(--compare_base)
if [ "$STEP" = all ]; then  # every complete checkpoint of the run, scored in one pass
  CKPTS=$(python3 -m chatglm.checkpoint "output/$CHECKPOINT" --all) || {
    echo "evaluate.sh: no checkpoint in output/$CHECKPOINT; train first or set CHECKPOINT/STEP." >&2; exit 1; }
else
  CKPTS=$(echo "$STEP" | tr ',' '\n' | sed "s|^|output/$CHECKPOINT/checkpoint-|" | paste -sd, -)
fi
case "$CKPTS" in *,*) OUT=output/$CHECKPOINT/'eval-{step}' ;; *) OUT=output/$CHECKPOINT/eval-${CKPTS##*-} ;; esac
if [ "${CONSTRAINED:-1}" = 0 ]; then EXTRA+=(--constrained_decoding false); OUT=$OUT-free; fi

echo "evaluate.sh: $MODEL + $CKPTS on $TEST_FILE"
"${LAUNCH[@]}" \
    --do_predict \
    --validation_file "$TEST_FILE" \
    --test_file "$TEST_FILE" \
    --overwrite_cache \
    --prompt_column input \
    --response_column target \
    --model_name_or_path "$MODEL" \
    --ptuning_checkpoint "$CKPTS" \
    --output_dir "$OUT" \
    --overwrite_output_dir \
    --per_device_eval_batch_size "$BATCH" \
    --predict_with_generate \
    "${DEFAULTS[@]}" \
    "${EXTRA[@]}" \
    "$@"
echo "evaluate.sh: outputs in $OUT (generated_predictions.txt, test_predictions.json, results.json, scores.json)"
