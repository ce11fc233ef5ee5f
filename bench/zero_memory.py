"""Per-GPU memory of full fine-tuning ChatGLM2-6B sharded over N GPUs (ZeRO-2, ZeRO-3 / FSDP
full_shard), from the model's parameter count and the ZeRO paper's accounting of mixed-precision
Adam: 2 bytes of half-precision weights + 2 of half gradients + 12 of fp32 master weights and
Adam moments = 16 bytes per parameter. ZeRO-2 shards the 14 bytes of gradients and optimizer
state; ZeRO-3 and FSDP full_shard (fp32 weights, fp32 gradients and Adam moments, all sharded:
the same 16 bytes) shard everything. Working memory on top: activations with checkpointing
(one hidden state per layer) and the largest gathered unit.

    python zero_memory.py [--config path/to/chatglm2-6b/config.json] [--seq 896] [--batch 1]
"""
import argparse
import json

SIX_B = {"num_layers": 28, "hidden_size": 4096, "ffn_hidden_size": 13696, "padded_vocab_size": 65024,
         "kv_channels": 128, "multi_query_group_num": 2, "add_qkv_bias": True}
GB = 1e9


def parameters(c: dict) -> tuple[int, int]:
    """(all parameters, the largest single module: the embedding or output layer)."""
    h, f, v = c["hidden_size"], c["ffn_hidden_size"], c["padded_vocab_size"]
    qkv_out = h + 2 * c["multi_query_group_num"] * c["kv_channels"]
    layer = h * qkv_out + (qkv_out if c.get("add_qkv_bias", True) else 0) + h * h + h * 2 * f + f * h + 2 * h
    return c["num_layers"] * layer + 2 * v * h + h, v * h


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="a chatglm2 config.json (default: chatglm2-6b's sizes)")
    ap.add_argument("--seq", type=int, default=896, help="tokens per row (700 prompt + 196 answer)")
    ap.add_argument("--batch", type=int, default=1, help="rows per GPU")
    args = ap.parse_args()
    c = json.load(open(args.config)) if args.config else SIX_B
    psi, largest = parameters(c)
    activations = args.batch * args.seq * c["hidden_size"] * 2 * c["num_layers"]  # checkpointed layer inputs, bf16
    working = activations + 2 * largest * 2 + 2 * GB  # + two gathered embedding-sized units, + CUDA context
    print(f"parameters {psi / 1e9:.3f}B; working memory ~{working / GB:.1f} GB "
          f"(activations {activations / GB:.2f} GB at batch {args.batch} x {args.seq})")
    print("| GPUs | ZeRO-2 model states | ZeRO-3 / FSDP full_shard model states | ZeRO-3 / FSDP total per GPU |")
    print("| ---: | ---: | ---: | ---: |")
    for n in (1, 2, 4, 8):
        zero2 = (2 * psi + 14 * psi / n) / GB
        zero3 = 16 * psi / n / GB
        print(f"| {n} | {zero2:.1f} GB | {zero3:.1f} GB | ~{zero3 + working / GB:.0f} GB |")


if __name__ == "__main__":
    main()
