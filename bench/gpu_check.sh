#!/usr/bin/env bash
# One prepared check for a GPU machine: everything the CPU cannot show, figures as JSON.
#
#   bash bench/gpu_check.sh             # cuda:0, a ChatGLM2-6B-shaped random checkpoint (~8 min on an H100)
#   bash bench/gpu_check.sh --dry-run   # the same steps on the tiny shape on the CPU (CI runs this)
#
# Steps: install carried wheels (.whl/, for a machine without network) -> `pytest -m cuda`
# (half-precision P-tuning with checkpointing, memory steady across steps, generation equal
# across batch sizes and compiled, int8/int4 on the device) -> a random checkpoint in the
# original file layout -> the user's own train.sh command line for a few steps -> a prediction
# with the checkpoint it wrote -> LoRA and QLoRA for a few steps -> DeepSpeed ZeRO-2 full
# fine-tuning on the tiny shape (when deepspeed imports) -> bench/continuous_batching.py (static
# batch vs continuous, eager vs compiled step) -> bench/gpu_bench.py. Results land in
# $OUT (default output/gpu_check): environment.json, cuda_tests.xml, train_results*.json (measured
# peaks) with memory_estimate*.json beside them (python -m chatglm.memory, same flags),
# predict_results.json, continuous_batching.json, gpu_bench.json, log.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-output/gpu_check}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1

PY=python3
[ -x .venv/bin/python ] && PY="$PWD/.venv/bin/python"
if [ "$DRY" = 0 ] && compgen -G ".whl/*.whl" > /dev/null; then  # pinned packages carried to a GPU machine without network
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_DATASETS_DISABLE_PROGRESS_BARS=1

if [ "$DRY" = 1 ]; then
  # The same steps, small: shorter rows, and of the CUDA tests not the half-precision P-tuning
  # steps (bf16 arithmetic is slow on CPUs without bf16 units; tests/test_half_precision.py runs
  # the same steps on the CPU).
  SHAPE=tiny STEPS=2 PREDICT=16 SOURCE=128 TARGET=32 CB_RECORDS=16 CB_COMPILED=()  # compiling on a CPU: tests/test_decode.py
  export GPU_CHECK_DEVICE=cpu
  BENCH=(--tiny --device cpu --steps 1 --bits 16 4)
  CUDA_TESTS=(-k "not ptuning_steps_in_half")
else
  SHAPE=6b STEPS=10 PREDICT=256 SOURCE=700 TARGET=196 CB_RECORDS=128 CB_COMPILED=(--compiled)
  BENCH=(--steps 3 --bits 16 4)
  CUDA_TESTS=()
fi
WORK=output/gpu_check_work
MODEL=$WORK/chatglm2-$SHAPE-random
RUN=$WORK/run-$SHAPE
step() { echo "== gpu_check: $* ($(date +%T))"; }

step "environment"
$PY - "$OUT/environment.json" <<'PYEOF'
import json, sys, platform, torch, transformers
info = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
PYEOF

step "pytest -m cuda"
$PY -m pytest -q -m cuda tests "${CUDA_TESTS[@]}" -p no:cacheprovider --junitxml "$OUT/cuda_tests.xml"

step "random ChatGLM2 ($SHAPE) in the original layout"
[ -f "$MODEL/config.json" ] || $PY bench/make_random_chatglm2.py --shape "$SHAPE" --out "$MODEL"

step "the user's command line: $STEPS steps (batch 32, source 64, target 128, pre_seq_len 128)"
$PY main.py --do_train --train_file PromptCBLUE/train.json --validation_file PromptCBLUE/dev.json \
  --preprocessing_num_workers 4 --prompt_column input --response_column target --overwrite_cache \
  --model_name_or_path "$MODEL" --output_dir "$RUN" --overwrite_output_dir \
  --max_source_length 64 --max_target_length 128 --per_device_train_batch_size 32 \
  --per_device_eval_batch_size 1 --gradient_accumulation_steps 1 --predict_with_generate \
  --max_steps "$STEPS" --logging_steps 1 --save_steps 200 --learning_rate 1e-2 --pre_seq_len 128 --report_to none
cp "$RUN/train_results.json" "$OUT/train_results.json"
# The memory check's estimate for the same flags, beside the measured peak (train_peak_gpu_memory_gb).
$PY -m chatglm.memory --model_name_or_path "$MODEL" --max_source_length 64 --max_target_length 128 \
  --per_device_train_batch_size 32 --per_device_eval_batch_size 1 --pre_seq_len 128 \
  --device "$([ "$DRY" = 1 ] && echo cpu || echo cuda)" --json > "$OUT/memory_estimate.json"

step "prediction: $PREDICT records with checkpoint-$STEPS"
head -n "$PREDICT" PromptCBLUE/train.json > "$WORK/predict.json"
$PY main.py --do_predict --test_file "$WORK/predict.json" --model_name_or_path "$MODEL" \
  --ptuning_checkpoint "$RUN/checkpoint-$STEPS" --output_dir "$RUN/predict" --overwrite_output_dir \
  --max_source_length "$SOURCE" --max_target_length "$TARGET" --per_device_eval_batch_size 32 --predict_with_generate \
  --report_to none
cp "$RUN/predict/predict_results.json" "$OUT/predict_results.json"

step "LoRA (rank 8, all linear layers) and QLoRA (int4 base): $STEPS steps each, batch 4, source $SOURCE"
for BITS in 16 4; do
  QUANT=(); [ "$BITS" = 4 ] && QUANT=(--quantization_bit 4)
  $PY main.py --do_train --train_file PromptCBLUE/train.json --model_name_or_path "$MODEL" \
    --output_dir "$RUN-lora-$BITS" --overwrite_output_dir --max_source_length "$SOURCE" --max_target_length "$TARGET" \
    --per_device_train_batch_size 4 --max_steps "$STEPS" --logging_steps 1 --save_steps "$STEPS" \
    --learning_rate 2e-4 --lora_rank 8 "${QUANT[@]}" --report_to none
  cp "$RUN-lora-$BITS/train_results.json" "$OUT/train_results_lora_$BITS.json"
  $PY -m chatglm.memory --model_name_or_path "$MODEL" --max_source_length "$SOURCE" --max_target_length "$TARGET" \
    --per_device_train_batch_size 4 --lora_rank 8 "${QUANT[@]}" \
    --device "$([ "$DRY" = 1 ] && echo cpu || echo cuda)" --json > "$OUT/memory_estimate_lora_$BITS.json"
done

step "DeepSpeed ZeRO-2 full fine-tuning (tiny shape, one process: the engine's path, not its scale)"
if [ "$DRY" = 0 ] && $PY -c "import deepspeed" 2>/dev/null; then
  TINY=$WORK/chatglm2-tiny-random
  [ -f "$TINY/config.json" ] || $PY bench/make_random_chatglm2.py --shape tiny --out "$TINY"
  if $PY -m torch.distributed.run --standalone --nproc-per-node 1 main.py --do_train \
      --train_file PromptCBLUE/train.json --model_name_or_path "$TINY" --output_dir "$RUN-zero2" \
      --overwrite_output_dir --max_source_length 128 --max_target_length 64 --per_device_train_batch_size 4 \
      --max_steps 4 --save_steps 4 --logging_steps 1 --learning_rate 1e-4 --bf16 \
      --deepspeed configs/ds_zero2.json --report_to none; then
    cp "$RUN-zero2/train_results.json" "$OUT/train_results_zero2.json"
  else  # recorded, not fatal: the rest of the check still runs
    echo '{"failed": "see log.txt"}' | tee "$OUT/train_results_zero2.json"
  fi
else
  echo '{"skipped": "deepspeed not importable (or --dry-run: it needs CUDA)"}' | tee "$OUT/train_results_zero2.json"
fi

step "continuous batching against the static batch, eager and compiled decode step (settles the CUDA default)"
$PY bench/continuous_batching.py --model "$MODEL" --dtype "$([ "$DRY" = 1 ] && echo float32 || echo float16)" \
  --records "$CB_RECORDS" --slots 16 --max_new_tokens "$TARGET" --source "$SOURCE" "${CB_COMPILED[@]}" | tee "$OUT/continuous_batching.json"

step "bench/gpu_bench.py ${BENCH[*]}"
(cd bench && $PY gpu_bench.py "${BENCH[@]}") | tee "$OUT/gpu_bench.json"
step "done: $OUT"
