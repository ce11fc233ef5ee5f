"""Which precision a CPU should load a half-precision folder in: one 6B-sized product
(4096 x 4096) in fp32, bf16 and fp16, as a decode step runs it (1 and 16 rows: bound by reading
the weight) and as a prompt pass runs it (128 rows: bound by arithmetic).

    python bench/dtype_speed.py

chatglm.checkpoint.inference_dtype loads an fp16 folder in bf16 where the CPU has bf16 units
(cpu_has_bf16), else in fp16: a half copy is what fits a 6B model in 24 GB either way.
"""
from _util import fastest, report

import torch


def main():
    from chatglm.checkpoint import cpu_has_bf16

    torch.manual_seed(0)
    w32 = torch.randn(4096, 4096)
    rows = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        w = w32.to(dtype)
        name = str(dtype).replace("torch.", "")
        one, sixteen, prompt = (torch.randn(n, 4096).to(dtype) for n in (1, 16, 128))
        t1 = fastest(lambda: torch.mv(w, one[0]), 5)
        t16 = fastest(lambda: torch.mm(w, sixteen.t()), 5)  # chatglm.decode.project's form for 2-32 rows
        tp = fastest(lambda: torch.nn.functional.linear(prompt, w), 2)
        gb = w.numel() * w.element_size() / 1e9
        rows[name] = {"decode_1_row_ms": round(t1 * 1e3, 2), "decode_1_row_gb_s": round(gb / t1, 1),
                      "decode_16_rows_ms": round(t16 * 1e3, 2),
                      "prompt_128_rows_gflop_s": round(2 * 128 * 4096 * 4096 / tp / 1e9, 1)}
    report({"bench": "dtype_speed", "cpu_has_bf16": cpu_has_bf16(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), **rows})


if __name__ == "__main__":
    main()
