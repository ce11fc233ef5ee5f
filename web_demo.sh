#!/usr/bin/env bash
# Web demo: base vs tuned answers side by side, streamed (THUDM's web_demo.sh). Settings from the
# environment as in evaluate.sh; extra arguments go to web_demo.py (the last value of a flag wins).
#
#   bash web_demo.sh                                   # embedded tiny model, its newest checkpoint
#   MODEL=/path/to/chatglm2-6b CHECKPOINT=promptcblue-chatglm2-6b-pt-128-2e-2 STEP=3000 bash web_demo.sh
#   PORT=8080 bash web_demo.sh --host 0.0.0.0
set -euo pipefail
cd "$(dirname "$0")"
[ -x .venv/bin/python ] && export PATH="$PWD/.venv/bin:$PATH"

DATA=${DATA:-PromptCBLUE}
ARGS=(--examples_file "${EXAMPLES_FILE:-$DATA/dev.json}" --port "${PORT:-7860}")
if [ -n "${MODEL:-}" ]; then
  ARGS+=(--model_name_or_path "$MODEL")
else
  [ -f output/tiny-chatglm2/config.json ] || { echo "web_demo.sh: no MODEL given and the embedded model is not built; run 'bash train.sh' first." >&2; exit 1; }
fi
if [ -n "${CHECKPOINT:-}" ]; then  # a run under output/: checkpoint-$STEP, or its newest complete one
  ARGS+=(--ptuning_checkpoint "output/$CHECKPOINT${STEP:+/checkpoint-$STEP}")
fi
[ -n "${QUANTIZATION_BIT:-}" ] && ARGS+=(--quantization_bit "$QUANTIZATION_BIT")
exec python3 web_demo.py "${ARGS[@]}" "$@"
