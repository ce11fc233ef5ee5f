"""Peak host memory of `python -m chatglm.export` against the weights it writes, for the base
and with a LoRA adapter merged, each in a process of its own under /usr/bin/time -v.

    python bench/export_memory.py --model DIR [--out output/export_memory] [--rank 8] [--load_check]

The adapter is random (rank --rank on every linear layer, written in PEFT's format without
loading the model: its A/B shapes come from the config). The figure is "Maximum resident set
size" / bytes of the written model*.safetensors. --load_check then loads each written folder
in a fresh transformers process (AutoModelForCausalLM, dtype "auto") and reports its dtype.
"""
import argparse
import glob
import json
import os
import re
import subprocess
import sys

from _util import ROOT, report

import torch


def write_random_adapter(model_dir: str, out: str, rank: int) -> str:
    from safetensors.torch import save_file

    from chatglm.lora import ADAPTER_CONFIG, ADAPTER_WEIGHTS, OUR_TARGETS, PEFT_PREFIX
    from chatglm.memory import glm_config

    c = glm_config(model_dir)
    h, d = c.hidden_size, c.head_dim
    shapes = {"q_proj": (h, c.num_attention_heads * d), "k_proj": (h, c.num_key_value_heads * d),
              "v_proj": (h, c.num_key_value_heads * d), "o_proj": (c.num_attention_heads * d, h),
              "gate_up_proj": (h, 2 * c.intermediate_size), "down_proj": (c.intermediate_size, h)}
    part = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
            "gate_up_proj": "mlp", "down_proj": "mlp"}
    gen = torch.Generator().manual_seed(0)
    state = {}
    for i in range(c.num_hidden_layers):
        for name in OUR_TARGETS:
            fan_in, fan_out = shapes[name]
            key = f"{PEFT_PREFIX}model.layers.{i}.{part[name]}.{name}"
            state[f"{key}.lora_A.weight"] = torch.randn(rank, fan_in, generator=gen) * 0.01
            state[f"{key}.lora_B.weight"] = torch.randn(fan_out, rank, generator=gen) * 0.01
    os.makedirs(out, exist_ok=True)
    save_file(state, os.path.join(out, ADAPTER_WEIGHTS), metadata={"format": "pt"})
    with open(os.path.join(out, ADAPTER_CONFIG), "w") as f:
        json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
                   "lora_dropout": 0.0, "target_modules": list(OUR_TARGETS), "bias": "none",
                   "base_model_name_or_path": model_dir}, f, indent=2)
    return out


def timed(cmd: list[str]) -> tuple[int, str]:
    """(peak RSS in bytes, stderr) of a command under /usr/bin/time -v."""
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    wall = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", proc.stderr).group(1)
    return peak, wall


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=os.path.join(ROOT, "output", "export_memory"))
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--load_check", action="store_true")
    args = ap.parse_args()
    adapter = write_random_adapter(args.model, os.path.join(args.out, "lora-adapter"), args.rank)
    results = {}
    for case, extra in (("base", []), ("lora_merged", ["--checkpoint", adapter])):
        folder = os.path.join(args.out, f"export-{case}")
        peak, wall = timed([sys.executable, "-m", "chatglm.export", "--model_name_or_path", args.model,
                            "--output_dir", folder, *extra])
        written = sum(os.path.getsize(p) for p in glob.glob(os.path.join(folder, "model*.safetensors")))
        with open(os.path.join(folder, "config.json")) as f:
            dtype = json.load(f).get("dtype")
        row = {"peak_rss_gb": round(peak / 2 ** 30, 2), "written_gb": round(written / 2 ** 30, 2),
               "peak_over_written": round(peak / written, 3), "dtype": dtype, "wall": wall}
        if args.load_check:
            code = ("import sys, torch; from transformers import AutoModelForCausalLM; "
                    "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); print(m.dtype)")
            peak_load, _ = timed([sys.executable, "-c", code, folder])
            row["transformers_load_peak_gb"] = round(peak_load / 2 ** 30, 2)
        results[case] = row
        print(json.dumps({case: row}), file=sys.stderr, flush=True)
    report({"bench": "export_memory", "model": args.model, "lora_rank": args.rank, **results})


if __name__ == "__main__":
    main()
