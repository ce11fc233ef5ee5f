"""One LoRA-adapted linear layer of ChatGLM2-6B, forward and backward: PEFT's own Linear.forward
against ours (chatglm/lora.py: the adapter in the activations' dtype, one addmm), side by side in
one process, on the model's own shapes and the bench's training rows (batch 4 x 193 tokens).

    python bench/lora_forward.py [--dtype bfloat16] [--tokens 772] [--rank 8]

Prints, per layer shape, the milliseconds of a forward and of a forward + backward (to the
input and the adapter's fp32 weights, as in training), the fastest of the repeats, then JSON.
"""
import argparse

from _util import fastest, report

import torch

SHAPES = {"q_proj": (4096, 4096), "o_proj": (4096, 4096), "gate_up_proj": (4096, 27392), "down_proj": (13696, 4096)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--tokens", type=int, default=4 * 193)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from chatglm.lora import add_lora

    dtype = getattr(torch, args.dtype)
    rows = []
    for name, (k, n) in SHAPES.items():
        torch.manual_seed(0)
        holder = torch.nn.Module()
        holder.proj = torch.nn.Linear(k, n, bias=False, dtype=dtype)
        add_lora(holder, args.rank, 2.0 * args.rank, 0.0, ["proj"])
        layer = holder.proj
        torch.nn.init.normal_(layer.lora_B["default"].weight, std=0.02)
        peft_forward = type(layer).__mro__[1].forward  # PEFT's Linear.forward, which ours overrides
        x = torch.randn(args.tokens, k, dtype=dtype, requires_grad=True)
        row = {"layer": name, "shape": [args.tokens, k, n]}
        for label, forward in (("peft", lambda: peft_forward(layer, x)), ("ours", lambda: layer(x))):
            with torch.no_grad():
                row[f"{label}_forward_ms"] = round(1e3 * fastest(forward, args.repeats), 2)
            row[f"{label}_forward_backward_ms"] = round(1e3 * fastest(lambda: forward().float().sum().backward(),
                                                                      args.repeats), 2)
        row["speedup_forward_backward"] = round(row["peft_forward_backward_ms"] / row["ours_forward_backward_ms"], 2)
        rows.append(row)
        print(f"{name:13s} {str(row['shape']):22s} forward PEFT {row['peft_forward_ms']:8.2f} ms, ours "
              f"{row['ours_forward_ms']:8.2f} | forward+backward PEFT {row['peft_forward_backward_ms']:8.2f}, ours "
              f"{row['ours_forward_backward_ms']:8.2f} ({row['speedup_forward_backward']}x)", flush=True)
    report({"bench": "lora_forward", "dtype": args.dtype, "tokens": args.tokens, "rank": args.rank,
            "layers": rows})


if __name__ == "__main__":
    main()
