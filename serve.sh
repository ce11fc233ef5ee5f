#!/usr/bin/env bash
# Serve a tuned checkpoint over OpenAI's HTTP API (chat completions, completions, models), every
# request in flight one row of a continuous batch. Settings from the environment, as evaluate.sh;
# extra arguments go to `python -m chatglm.serve` (the last value of a flag wins).
#
#   bash serve.sh                                      # embedded tiny model, its run's best checkpoint, 127.0.0.1:8000
#   MODEL=/path/to/chatglm2-6b CHECKPOINT=promptcblue-chatglm2-6b-pt-128-2e-2 STEP=3000 bash serve.sh
#   METHOD=lora bash serve.sh                          # the run `LORA_RANK=8 bash train.sh` made
#   PORT=9000 API_KEY=secret bash serve.sh             # another port; require `Authorization: Bearer secret`
#   bash serve.sh --checkpoint other=output/RUN2       # more P-tuning checkpoints beside the default one
#
# Then: curl http://127.0.0.1:8000/v1/models, or any OpenAI client with base_url http://127.0.0.1:8000/v1.
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"

METHOD=${METHOD:-$([ -n "${LORA_RANK:-}" ] && echo lora || echo ptuning)}
case "$METHOD" in  # the run name train.sh gave (or set CHECKPOINT)
  lora) TAG=lora-${LORA_RANK:-8} ;;
  full) echo "serve.sh: a full fine-tune is a model of its own: MODEL=output/RUN/checkpoint-N bash serve.sh" >&2; exit 2 ;;
  *) TAG=pt-${PRE_SEQ_LEN:-128} ;;
esac
if [ -z "${MODEL:-}" ]; then
  MODEL=output/tiny-chatglm2
  [ -f "$MODEL/config.json" ] || { echo "serve.sh: no MODEL given and $MODEL is not built; run 'bash train.sh' first." >&2; exit 1; }
  case "$METHOD" in lora) LR=${LR:-2e-3} ;; *) LR=${LR:-1e-1} ;; esac
  CHECKPOINT=${CHECKPOINT:-tiny-chatglm2-$TAG-$LR}
  DEFAULTS=(--max_source_length 128 --max_new_tokens 96)  # evaluate.sh's lengths for the embedded model
else
  case "$METHOD" in lora) LR=${LR:-2e-4} ;; *) LR=${LR:-2e-2} ;; esac
  CHECKPOINT=${CHECKPOINT:-promptcblue-$(basename "$MODEL")-$TAG-$LR}
  DEFAULTS=(--max_source_length ${MAX_SOURCE_LENGTH:-700} --max_new_tokens ${MAX_TARGET_LENGTH:-196})
fi
CKPT=output/$CHECKPOINT
[ -n "${STEP:-}" ] && CKPT=$CKPT/checkpoint-$STEP  # without STEP: the run's best checkpoint, else its newest
EXTRA=()
[ "${CONSTRAINED:-1}" = 0 ] && EXTRA+=(--constrained_decoding false)
echo "serve.sh: $MODEL + $CKPT on http://${HOST:-127.0.0.1}:${PORT:-8000}/v1"
exec python3 -m chatglm.serve --model_name_or_path "$MODEL" --checkpoint "$CHECKPOINT=$CKPT" \
    --host "${HOST:-127.0.0.1}" --port "${PORT:-8000}" --max_batch "${BATCH:-32}" "${DEFAULTS[@]}" "${EXTRA[@]}" "$@"
