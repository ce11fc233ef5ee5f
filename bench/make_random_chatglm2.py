"""Write a ChatGLM2 folder with random weights in the original layout (no download needed).

    python bench/make_random_chatglm2.py --shape 6b --out /tmp/chatglm2-6b-random     # 12.5 GB, fp16
    python bench/make_random_chatglm2.py --shape tiny --out /tmp/chatglm2-tiny-random
    python bench/make_random_chatglm2.py --shape small --out /tmp/chatglm2-small-65k \
        --tokenizer_data ../shared/data/promptcblue/train.json --vocab 64789       # ChatGLM2's vocabulary size

Like THUDM/chatglm2-6b: config.json (model_type chatglm), `pytorch_model-0000N-of-0000M.bin`
shards with their `pytorch_model.bin.index.json`, original tensor names (fused
query_key_value), and a tokenizer.model (a small sentencepiece model trained on the sample
data; ids beyond it are simply never produced by the tokenizer). Weights are N(0, 0.02),
norms 1, written one shard at a time so host memory stays at one shard.
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = {
    "6b": dict(num_layers=28, hidden_size=4096, num_attention_heads=32, kv_channels=128, multi_query_group_num=2,
               ffn_hidden_size=13696, padded_vocab_size=65024),
    "tiny": dict(num_layers=2, hidden_size=256, num_attention_heads=8, kv_channels=32, multi_query_group_num=2,
                 ffn_hidden_size=688, padded_vocab_size=4096),
    # ~240M parameters with ChatGLM2's 65k vocabulary: a decode step of tens of milliseconds on a
    # CPU, the order of the 6B model's on a GPU (what per-step costs such as a grammar mask are
    # measured against).
    "small": dict(num_layers=8, hidden_size=1024, num_attention_heads=16, kv_channels=64, multi_query_group_num=2,
                  ffn_hidden_size=2816, padded_vocab_size=65024),
}


def layer_tensors(i: int, s: dict, dtype, gen) -> dict:
    h, d = s["hidden_size"], s["kv_channels"]
    qkv = (s["num_attention_heads"] + 2 * s["multi_query_group_num"]) * d
    p = f"transformer.encoder.layers.{i}."
    return {p + "input_layernorm.weight": torch.ones(h, dtype=dtype),
            p + "self_attention.query_key_value.weight": _normal((qkv, h), dtype, gen),
            p + "self_attention.query_key_value.bias": _normal((qkv,), dtype, gen),
            p + "self_attention.dense.weight": _normal((h, s["num_attention_heads"] * d), dtype, gen),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=dtype),
            p + "mlp.dense_h_to_4h.weight": _normal((2 * s["ffn_hidden_size"], h), dtype, gen),
            p + "mlp.dense_4h_to_h.weight": _normal((h, s["ffn_hidden_size"]), dtype, gen)}


def _normal(shape, dtype, gen):
    return (torch.randn(shape, generator=gen) * 0.02).to(dtype)


def write(out: str, shape: str, dtype=torch.float16, layers_per_shard: int = 4, seed: int = 0,
          tokenizer_data: str | None = None, vocab: int = 2000) -> str:
    from chatglm.convert import chatglm_config_from_glm, glm_config_from_chatglm
    from chatglm.tiny import train_tokenizer
    from chatglm.tokenizer import ChatGLMTokenizer

    s = SHAPES[shape]
    os.makedirs(out, exist_ok=True)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    train_tokenizer(tokenizer_data or os.path.join(root, "PromptCBLUE", "train.json"),
                    os.path.join(out, "tokenizer.model"), vocab_size=vocab)
    ChatGLMTokenizer(os.path.join(out, "tokenizer.model")).save_pretrained(out)
    raw = dict(model_type="chatglm", multi_query_attention=True, layernorm_epsilon=1e-5, seq_length=32768,
               eos_token_id=2, pad_token_id=0, **s)
    config = chatglm_config_from_glm(glm_config_from_chatglm(raw), str(dtype).replace("torch.", ""))
    gen = torch.Generator().manual_seed(seed)
    groups = [list(range(i, min(i + layers_per_shard, s["num_layers"])))
              for i in range(0, s["num_layers"], layers_per_shard)]
    n = len(groups)
    weight_map, total = {}, 0
    for k, layers in enumerate(groups):
        shard = {}
        if k == 0:
            shard["transformer.embedding.word_embeddings.weight"] = _normal(
                (s["padded_vocab_size"], s["hidden_size"]), dtype, gen)
            rot = s["kv_channels"] // 2
            shard["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
        for i in layers:
            shard.update(layer_tensors(i, s, dtype, gen))
        if k == n - 1:
            shard["transformer.encoder.final_layernorm.weight"] = torch.ones(s["hidden_size"], dtype=dtype)
            shard["transformer.output_layer.weight"] = _normal((s["padded_vocab_size"], s["hidden_size"]), dtype, gen)
        name = f"pytorch_model-{k + 1:05d}-of-{n:05d}.bin"
        torch.save(shard, os.path.join(out, name + ".tmp"))
        os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
        weight_map.update({t: name for t in shard})
        total += sum(t.numel() * t.element_size() for t in shard.values())
        del shard
    with open(os.path.join(out, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)
    with open(os.path.join(out, "config.json"), "w") as f:  # written last: the folder is complete
        json.dump(config, f, indent=2)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="6b")
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokenizer_data", default=None, help="PromptCBLUE records to train the tokenizer on "
                                                           "(default: the sample train.json)")
    ap.add_argument("--vocab", type=int, default=2000, help="sentencepiece pieces (ChatGLM2: 64789)")
    args = ap.parse_args()
    print(write(args.out, args.shape, tokenizer_data=args.tokenizer_data, vocab=args.vocab))


if __name__ == "__main__":
    main()
