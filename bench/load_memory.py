"""Peak host memory while loading a ChatGLM2 folder, at 16/8/4 bits.

    python bench/load_memory.py [--layers 12] [--hidden 1024]

Writes (once) a random-weight ChatGLM2 of about 0.27B parameters in the original layout (fp16
pytorch_model.bin, as chatglm2-6b ships) under output/bench-medium, then loads it in a fresh
process per setting and reports that process's peak RSS next to the size of the loaded model.
Streaming shard by shard means the peak stays near the loaded size, not twice the checkpoint.
"""
import argparse
import json
import os
import subprocess
import sys

from _util import ROOT, report

import torch


def build(path, layers, hidden):
    if os.path.exists(os.path.join(path, "pytorch_model.bin")):
        return
    from transformers import GlmForCausalLM

    from chatglm.checkpoint import save_chatglm
    from chatglm.convert import glm_config_from_chatglm

    shape = dict(model_type="chatglm", num_layers=layers, hidden_size=hidden, num_attention_heads=hidden // 128,
                 kv_channels=128, multi_query_attention=True, multi_query_group_num=2, ffn_hidden_size=hidden * 11 // 4,
                 padded_vocab_size=65024, layernorm_epsilon=1e-5, seq_length=32768, eos_token_id=2, pad_token_id=0)
    model = GlmForCausalLM._from_config(glm_config_from_chatglm(shape), dtype=torch.float16)
    save_chatglm(model, path)


def _rss_anon_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(path, bits):
    """Loads in this (fresh) process. Peak RSS counts the checkpoint's mmap'd pages, which are
    file-backed and reclaimable; the anonymous peak (sampled every 5 ms) is the memory the
    loading really holds."""
    import threading
    import time

    from _util import peak_rss_mb

    from chatglm.checkpoint import load_glm
    from chatglm.quantization import quantized_bytes

    base_anon, peak_anon, done = _rss_anon_mb(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak_anon[0] = max(peak_anon[0], _rss_anon_mb())
            time.sleep(0.005)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    model = load_glm(path, dtype=torch.float16, quantization_bit=bits or None)
    done.set()
    t.join()
    print(json.dumps({"loaded_model_mb": round(quantized_bytes(model) / 2 ** 20, 1),
                      "peak_anonymous_mb_above_start": round(peak_anon[0] - base_anon, 1),
                      "peak_rss_mb_incl_mmap_pages": round(peak_rss_mb(), 1)}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=1024)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    path = os.path.join(ROOT, "output", f"bench-medium-{args.layers}x{args.hidden}")
    if args.child is not None:
        return child(path, args.child)
    build(path, args.layers, args.hidden)
    results = {"checkpoint_mb": round(os.path.getsize(os.path.join(path, "pytorch_model.bin")) / 2 ** 20, 1)}
    for bits in (0, 8, 4):
        out = subprocess.run([sys.executable, __file__, "--layers", str(args.layers), "--hidden", str(args.hidden),
                              "--child", str(bits)], capture_output=True, text=True, check=True)
        results[f"{bits or 16}bit"] = json.loads(out.stdout.strip().splitlines()[-1])
    report({"bench": "load_memory", "model": path, **results})


if __name__ == "__main__":
    main()
