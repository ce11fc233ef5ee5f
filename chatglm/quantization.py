"""Weight-only int8 / int4 quantization of the frozen base model (`--quantization_bit 8|4`).

The original's scheme (THUDM chatglm2 quantization.py), restated:
  * every linear weight of every layer (q/k/v, o, gate_up, down) gets one scale per output
    row: scale = max|w_row| / (2^(bits-1) - 1); q = round(w / scale), int8 storage;
  * int4 keeps values in [-7, 7] and packs two per byte along the input dimension, the even
    column in the high nibble (the layout of the pre-quantized chatglm2-6b-int4 files);
  * embeddings, norms, the output layer and the prefix stay in floating point.
At run time the weight is expanded to the activations' dtype and multiplied (the original
does the same with cpm_kernels' extraction kernels; here it is plain torch on CPU and GPU).
A custom autograd function keeps only the int8 weight for the backward pass, so P-tuning
through a quantized model does not store a float copy of every weight.
"""
from __future__ import annotations

import torch
from torch import nn

QUANTIZED_SUFFIXES = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                      "mlp.gate_up_proj", "mlp.down_proj")


def quantize(weight: torch.Tensor, bits: int, chunk_elements: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """(int8 storage, per-row scale in the weight's dtype).

    Rows are processed in chunks of about `chunk_elements`, so the fp32 temporaries stay a few
    MB however large the matrix (a 27392 x 4096 weight would otherwise need ~1.5 GB of them).
    """
    if bits not in (4, 8):
        raise ValueError(f"--quantization_bit must be 4 or 8, not {bits}")
    if bits == 4 and weight.shape[1] % 2:
        raise ValueError("int4 needs an even number of input features")
    limit = 2 ** (bits - 1) - 1
    rows, cols = weight.shape
    q = torch.empty(rows, cols if bits == 8 else cols // 2, dtype=torch.int8, device=weight.device)
    scale = torch.empty(rows, dtype=weight.dtype, device=weight.device)
    step = max(1, chunk_elements // max(cols, 1))
    for r in range(0, rows, step):
        w = weight[r:r + step].float()
        s = w.abs().amax(dim=-1) / limit
        s = torch.where(s == 0, torch.ones_like(s), s)  # an all-zero row stays zero
        qc = torch.round(w / s[:, None]).clamp_(-limit, limit).to(torch.int8)
        if bits == 4:
            qc = ((qc[:, 0::2].to(torch.int16) << 4) | (qc[:, 1::2].to(torch.int16) & 0x0F)).to(torch.uint8).view(torch.int8)
        q[r:r + step] = qc
        scale[r:r + step] = s.to(weight.dtype)
    return q, scale


def dequantize(q: torch.Tensor, scale: torch.Tensor, bits: int, dtype: torch.dtype) -> torch.Tensor:
    if bits == 4:
        p = q.to(torch.int16)
        high = p >> 4  # arithmetic shift: sign-extended high nibble
        low = ((p & 0x0F) ^ 0x08) - 0x08  # sign-extend the low nibble
        q = torch.stack([high, low], dim=-1).view(q.shape[0], q.shape[1] * 2)
    return q.to(dtype) * scale.to(dtype)[:, None]


class _QuantizedMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, q, scale, bits):
        w = dequantize(q, scale, bits, x.dtype)
        ctx.save_for_backward(q, scale)
        ctx.bits = bits
        return x @ w.t()

    @staticmethod
    def backward(ctx, grad_out):
        q, scale = ctx.saved_tensors
        w = dequantize(q, scale, ctx.bits, grad_out.dtype)
        return grad_out @ w, None, None, None


class QuantizedLinear(nn.Module):
    """A frozen linear layer with an int8 (or packed int4) weight and per-row scales."""

    def __init__(self, in_features: int, out_features: int, bits: int, bias: bool, dtype: torch.dtype,
                 device=None):
        super().__init__()
        self.in_features, self.out_features, self.bits = in_features, out_features, bits
        cols = in_features if bits == 8 else in_features // 2
        self.register_buffer("weight", torch.empty(out_features, cols, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.empty(out_features, dtype=dtype, device=device))
        self.bias = nn.Parameter(torch.empty(out_features, dtype=dtype, device=device), requires_grad=False) \
            if bias else None

    def set_float_weight(self, weight: torch.Tensor) -> None:
        self.weight, self.weight_scale = quantize(weight, self.bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _QuantizedMatmul.apply(x, self.weight, self.weight_scale, self.bits)
        return out + self.bias.to(out.dtype) if self.bias is not None else out

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}"


def replace_linears(model: nn.Module, bits: int, dtype: torch.dtype) -> None:
    """Swap the layers' nn.Linear modules for QuantizedLinear (on the meta device, before loading)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and name.endswith(QUANTIZED_SUFFIXES):
            parent, _, child = name.rpartition(".")
            q = QuantizedLinear(module.in_features, module.out_features, bits, module.bias is not None, dtype,
                                device=module.weight.device)
            setattr(model.get_submodule(parent), child, q)


def quantized_bytes(model: nn.Module) -> int:
    return sum(b.numel() * b.element_size() for b in model.buffers()) + \
        sum(p.numel() * p.element_size() for p in model.parameters())
