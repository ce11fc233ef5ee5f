"""The peak accelerator memory a run needs, before it starts, for any settings.

    python -m chatglm.memory --model_name_or_path DIR [main.py's flags: --pre_seq_len 128
        --per_device_train_batch_size 32 --max_source_length 64 --max_target_length 128 --fp16
        --quantization_bit 4 --lora_rank 8 --gradient_checkpointing ...] [--num_gpus 4 --sharding zero3]

No rule of thumb: the figures come from running the run's own code (ChatGLM2, PrefixEncoder,
PEFT LoRA, QuantizedLinear, the answer-only loss, fused AdamW, the prompt pass and the static
decode cache of prediction) at the model's real shapes on fake tensors (torch's FakeTensorMode:
shapes and dtypes, no storage, no arithmetic), while torch's MemTracker adds up the bytes of
every tensor alive, by kind, and keeps the breakdown at the peak. Every row is taken at its
longest (source + target + eos), the worst batch a run meets. What fake tensors cannot show is
added by formula: sharding over processes (FSDP / ZeRO), DDP's gradient buckets, the CUDA
context. `--pattern original` runs the original code's work pattern instead (logits at every
position, cast to fp32 before the loss) to compare with the original's published figures.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass, field

import torch

from .cuda_allocator import replay

GIB = 2 ** 30
# Not tensors, so invisible to the tracker: the CUDA context with cuBLAS/cuDNN handles and
# their workspaces, as nvidia-smi shows it next to the allocator's memory (a few hundred MB on
# V100/A100 with torch 2; measured by bench/gpu_check.sh when a GPU is lent).
CUDA_CONTEXT_BYTES = int(0.5 * GIB)
_CHATGLM2_6B = dict(model_type="chatglm", num_layers=28, hidden_size=4096, num_attention_heads=32,
                   kv_channels=128, multi_query_attention=True, multi_query_group_num=2,
                   ffn_hidden_size=13696, padded_vocab_size=65024, layernorm_epsilon=1e-5,
                   seq_length=32768, eos_token_id=2, pad_token_id=0)
SHAPES = {  # configs of models nobody has to download to ask (their hub config.json fields)
    "chatglm2-6b": _CHATGLM2_6B,
    "chatglm3-6b": {**_CHATGLM2_6B, "seq_length": 8192},  # same sizes; -32k: rope_ratio 50
    "glm-4-9b": {**_CHATGLM2_6B, "num_layers": 40, "padded_vocab_size": 151552, "layernorm_epsilon": 1.5625e-07,
                 "rope_ratio": 500, "seq_length": 131072, "eos_token_id": [151329, 151336, 151338],
                 "pad_token_id": 151329},
}


@dataclass
class RunSettings:
    """What decides a run's memory; names follow main.py's flags."""
    method: str = "ptuning"  # ptuning | lora | full
    batch: int = 1  # --per_device_train_batch_size
    source: int = 64  # --max_source_length (prompt tokens, [gMASK] sop included)
    target: int = 128  # --max_target_length
    pre_seq_len: int = 0
    prefix_projection: bool = False
    lora_rank: int = 8
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                             "gate_up_proj", "down_proj"])  # main.py's default
    lora_dropout: float = 0.1
    dtype: str = "float16"  # the frozen base's dtype (model.base_dtype); full fine-tuning: fp32 + autocast
    autocast: str | None = None  # full fine-tuning under --bf16 / --fp16
    quantization_bit: int | None = None
    checkpointing: bool = True
    num_gpus: int = 1
    sharding: str = "none"  # none | fsdp | zero2 | zero3
    eval_batch: int = 16  # --per_device_eval_batch_size: the engine's slots per model evaluated
    eval_models: int = 1  # models in one evaluation pass (2 with --compare_base): slots = eval_batch x this
    eval_new_tokens: int | None = None  # default: target
    pattern: str = "ours"  # ours | original

    @property
    def row_length(self) -> int:
        return self.source + self.target + 1

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


@dataclass
class MemoryEstimate:
    """Bytes per device at the peak, by part; `total` is what the device must hold."""
    weights: int
    trainable: int  # trainable parameters + their gradients + optimizer state
    activations: int  # saved for backward at the peak
    workspace: int  # temporaries alive at the peak (gradients in flight, the loss head's copies)
    logits: int  # of activations + workspace: the loss head's [rows, vocab] tensors (formula)
    activations_without_checkpointing: int | None
    activations_with_checkpointing: int | None
    prediction_peak: int | None  # --do_eval / --do_predict: weights + prompt pass + decode cache (None: not asked)
    generation_cache: int | None  # of prediction_peak: the static key/value cache (prefix + prompt + new tokens)
    reserved: int  # what CUDA's caching allocator holds for the same tensors: nvidia-smi without the context
    sharding_note: str = ""
    context: int = 0  # CUDA context (not tensors); 0 on a CPU

    @property
    def training_peak(self) -> int:
        return self.weights + self.trainable + self.activations + self.workspace

    @property
    def tensor_peak(self) -> int:
        return max(self.training_peak, self.prediction_peak or 0)

    @property
    def total(self) -> int:
        """On CUDA what nvidia-smi shows at the peak (reserved + context); on a CPU the tensors."""
        return self.reserved + self.context if self.context else self.tensor_peak


def glm_config(model: str):
    """A GlmConfig from a ChatGLM folder, its config.json, or a name in SHAPES."""
    from .convert import glm_config_from_chatglm

    if model in SHAPES:
        raw = SHAPES[model]
    else:
        path = os.path.join(model, "config.json") if os.path.isdir(model) else model
        if not os.path.isfile(path):
            raise ValueError(f"{model}: neither a ChatGLM folder, its config.json, nor one of {sorted(SHAPES)}")
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
    return glm_config_from_chatglm(raw)


GB = 1 << 30


def weights_bytes(model_dir: str, dtype: torch.dtype, quantization_bit: int | None = None) -> int:
    """Bytes of a folder's model loaded in `dtype` (int8/int4 layers with --quantization_bit or a
    pre-quantized folder): parameters and buffers of the model built on the meta device."""
    from transformers import GlmForCausalLM

    from .quantization import replace_linears

    config = glm_config(model_dir)
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        bits = json.load(f).get("quantization_bit") or quantization_bit
    with torch.device("meta"):
        model = GlmForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
        if bits:
            replace_linears(model, bits, dtype)
    return sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))


def available_bytes(device) -> int:
    """Memory free for a new model: MemAvailable on the host, free memory on a CUDA device;
    at most GLM2_MAX_MEMORY_GB when set (to keep room for other work on the machine)."""
    cap = os.environ.get("GLM2_MAX_MEMORY_GB")
    free = _free_bytes(torch.device(device))
    return min(free, int(float(cap) * GB)) if cap else free


def _free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 1 << 62  # not Linux: nothing to check against


def require_fit(model_dir: str, dtype: torch.dtype, device, quantization_bit: int | None = None,
                extra_bytes: int = 0, flags: str = "") -> int:
    """Refuse, before any weight is read, a model that cannot fit where it goes: one line that
    says what it needs, what is free and which flag helps (the caller's tool prints it, exit 2).
    Returns the bytes of the weights."""
    need = weights_bytes(model_dir, dtype, quantization_bit)
    free = available_bytes(device)
    total = need + extra_bytes
    if total <= free:
        return need
    name = str(dtype).replace("torch.", "")
    hints = []
    if not quantization_bit:
        hints += [f"--quantization_bit {b} (about {weights_bytes(model_dir, dtype, b) / GB:.1f} GB)" for b in (8, 4)]
    if dtype == torch.float32:
        hints.append(f"a half precision ({flags or '--bf16 / --fp16'}: about {need / 2 / GB:.1f} GB)")
    raise ValueError(f"{model_dir} needs about {total / GB:.1f} GB in {name} on {torch.device(device).type}, and "
                     f"{free / GB:.1f} GB is free: not loading it" + (f"; try {' or '.join(hints)}" if hints else ""))


def _fake_run_model_class():
    from .model import ChatGLM

    class FakeRunModel(ChatGLM):
        """ChatGLM with one change: the answer positions are selected by a fixed index instead of
        the mask `labels != -100`, whose size fake tensors cannot know (it depends on the data).
        Same rows, same copy and the same scatter in backward, so the same bytes."""
        answer_positions = 0

        def answer_loss(self, hidden, labels, num_items_in_batch=None):
            targets = labels[:, 1:]
            cols = torch.arange(self.answer_positions, targets.shape[1])
            logits = self.base.lm_head(hidden[:, :-1][:, cols].flatten(0, 1)).float()
            return torch.nn.functional.cross_entropy(logits, targets[:, cols].flatten())

    return FakeRunModel


def _meta_model(config, s: RunSettings, training: bool):
    """The run's model, built as main.load_model builds it, on the meta device (no memory)."""
    from transformers import GlmForCausalLM

    from .prefix import PrefixEncoder
    from .quantization import replace_linears

    full = training and s.method == "full"
    dtype = torch.float32 if full else s.torch_dtype
    with torch.device("meta"):
        base = GlmForCausalLM._from_config(config, attn_implementation="sdpa", dtype=dtype)
        if s.quantization_bit:
            replace_linears(base, s.quantization_bit, dtype)
        prefix = None
        if s.method == "ptuning" and s.pre_seq_len:
            c = base.config
            prefix = PrefixEncoder(s.pre_seq_len, c.num_hidden_layers, c.num_key_value_heads, c.head_dim,
                                   c.hidden_size, s.prefix_projection)
        model = _fake_run_model_class()(base, prefix)
        model.answer_positions = s.source - 1  # the first shifted position whose target is an answer token
        if s.method == "lora":
            model.add_lora(s.lora_rank, 2.0 * s.lora_rank, s.lora_dropout if training else 0.0, s.lora_targets)
    if full:
        model.base.requires_grad_(True)
    elif prefix is None and s.method != "lora":  # (add_lora froze the base around its adapters)
        model.base.requires_grad_(False)
    return model


def _as_fake(model: torch.nn.Module) -> torch.nn.Module:
    """Meta parameters and buffers -> fake CPU tensors of the same shape, dtype and trainability
    (called inside a FakeTensorMode; PEFT's layers cannot be built on fake tensors directly)."""
    for module in model.modules():
        for name, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[name] = torch.nn.Parameter(torch.empty(p.shape, dtype=p.dtype),
                                                              requires_grad=p.requires_grad)
        for name, b in list(module._buffers.items()):
            if b is not None:
                module._buffers[name] = torch.empty(b.shape, dtype=b.dtype)
    return model


class _NoHook:
    def remove(self):
        pass


def _whole_peak_tracker():
    from torch.distributed._tools.mem_tracker import _TOTAL_KEY, MemTracker, _UpdateType

    class WholePeakTracker(MemTracker):
        """MemTracker keeping the whole process's peak only (its per-module peaks walk every
        module at every operation, minutes for a 6B step), and the order in which storages
        come and go (`events`, for chatglm.cuda_allocator)."""

        def __init__(self):
            super().__init__()
            self.events: list[tuple[str, int, int]] = []

        def _update_snap(self, u_type, winfo, old_mem_consumed=None, old_reftype=None) -> None:
            super()._update_snap(u_type, winfo, old_mem_consumed, old_reftype)
            if u_type == _UpdateType.ADD:
                self.events.append(("alloc", id(winfo), winfo.mem_consumed))
            elif u_type == _UpdateType.DEL:
                self.events.append(("free", id(winfo), 0))
            elif u_type == _UpdateType.SIZE:
                self.events += [("free", id(winfo), 0), ("alloc", id(winfo), winfo.mem_consumed)]

        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[_TOTAL_KEY]:
                    self._peak_mem[dev] = snap[_TOTAL_KEY]
                    self._peak_mem_snap[dev] = dict(snap)

    return WholePeakTracker


def memory_tracker(*tracked):
    """torch's MemTracker, following `tracked` (modules, optimizers) from before it is entered.
    It hooks every parameter's gradient, which a frozen parameter cannot take: those are
    marked as hooked already (they never get a gradient)."""
    tracker = _whole_peak_tracker()()
    for obj in tracked:
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters():
                if not p.requires_grad:
                    tracker._param_to_grad_hook_handles[p] = (_NoHook(), _NoHook())
    tracker.track_external(*tracked)
    return tracker


def peak_by_kind(tracker) -> dict[str, int]:
    """The tracker's peak: bytes by kind (Parameter, Buffer, Gradient, Activation, Temp,
    Optstate) and Total, at the moment the total was highest."""
    peak = next(iter(tracker.get_tracker_snapshot("peak").values()), {})
    return {str(getattr(k, "value", k)): v for k, v in peak.items()}


def _training_rows(s: RunSettings, vocab: int) -> dict:
    """A batch as PadCollator gives it, every row at its longest: prompt labelled -100."""
    ids = torch.full((s.batch, s.row_length), 5, dtype=torch.long).clamp(max=vocab - 1)
    labels = ids.clone()
    labels[:, :s.source] = -100
    return {"input_ids": ids, "labels": labels}


def _original_loss(model, batch):
    """The original's loss, step by step as THUDM's chatglm2 ChatGLMForConditionalGeneration
    does it: the output layer at every position in its [length, batch] layout, a contiguous
    [batch, length] copy, an fp32 copy, a shifted contiguous copy, cross-entropy; the logits
    are cast back to the model's dtype for the returned output before the fp32 copy is let go."""
    hidden = model.base.model(input_ids=batch["input_ids"], past_key_values=model.past_for(
        batch["input_ids"].shape[0], False), use_cache=False).last_hidden_state
    logits = model.base.lm_head(hidden.transpose(0, 1))  # [length, batch, vocab]
    logits = logits.transpose(0, 1).contiguous()
    logits = logits.to(torch.float32)
    shift = logits[..., :-1, :].contiguous()
    loss = torch.nn.functional.cross_entropy(shift.view(-1, shift.size(-1)), batch["labels"][..., 1:].reshape(-1))
    logits = logits.to(hidden.dtype)  # noqa: F841  (kept until the forward returns, as the original's output)
    return loss


def _attention(s: RunSettings):
    """Our runs: whichever attention kernel torch picks. The original's: the explicit (math)
    attention, which torch 2.0 ran on a V100 when given a mask (the prefix's), as there."""
    if s.pattern != "original":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


def simulate_training(config, s: RunSettings, checkpointing: bool) -> dict:
    """Peak of one training step (forward, backward, optimizer step) on fake tensors, by kind."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    batch = _training_rows(s, config.vocab_size)
    model = _meta_model(config, s, training=True)
    with FakeTensorMode(allow_non_fake_inputs=True):
        _as_fake(model)
        if checkpointing:
            model.gradient_checkpointing_enable()
        model.train()
        params = [p for p in model.parameters() if p.requires_grad]
        trainable = sum(p.numel() * p.element_size() for p in params)
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)  # transformers 5's default optimizer

        def step():
            cast = (torch.autocast("cpu", dtype=getattr(torch, s.autocast)) if s.autocast
                    else contextlib.nullcontext())
            with _attention(s):  # (the backward's recompute runs the same kernels)
                with cast:
                    loss = _original_loss(model, batch) if s.pattern == "original" else model(**batch).loss
                loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        tracker = memory_tracker(model, opt)
        with tracker:
            step()
        peak = peak_by_kind(tracker)
    peak["trainable_parameters"] = trainable
    peak["reserved"] = replay(tracker.events).reserved
    return peak


def simulate_prediction(config, s: RunSettings) -> dict:
    """Peak of prediction on fake tensors, as the engine runs it (chatglm/engine/): the slots'
    cache (eval_batch x eval_models slots, each prefix + a full-length prompt + new tokens), the
    prompt passes that fill it (at most PREFILL_TOKENS prompt tokens a pass), one decode step."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from .engine.runner import ModelRunner

    new = s.eval_new_tokens or s.target
    slots = s.eval_batch * s.eval_models
    model = _meta_model(config, s, training=False)
    with FakeTensorMode(allow_non_fake_inputs=True):
        _as_fake(model)
        model.eval().requires_grad_(False)

        def run(tracker):
            with torch.no_grad():
                runner = ModelRunner(model.base, slots)
                prefix = model.prefix_encoder.key_values(1, model.dtype) if model.prefix_encoder is not None else None
                runner.reserve(model.pre_seq_len + s.source + new)
                logits = runner.prefill(list(range(slots)), [[5] * s.source] * slots, prefix, None)
                tracker.reset_mod_stats()  # the decode step runs the modules a second time
                runner.decode(logits.argmax(-1), [True] * slots)
                return runner.cache_bytes

        tracker = memory_tracker(model)
        with tracker:
            cache_bytes = run(tracker)
        peak = peak_by_kind(tracker)
    peak["generation_cache"] = cache_bytes
    peak["reserved"] = replay(tracker.events).reserved
    return peak


def logits_bytes(config, s: RunSettings) -> int:
    """The loss head's [rows, vocab] tensors at their peak. Ours: the output layer on the labelled
    positions only (target + eos per row): its output in the model's dtype, an fp32 copy, and
    cross-entropy's fp32 log-probabilities. The original: the same at every position, plus the
    shifted fp32 copy."""
    item = 2 if s.torch_dtype in (torch.float16, torch.bfloat16) else 4
    rows = s.batch * (s.target + 1 if s.pattern == "ours" else s.row_length)
    per_row = config.vocab_size * (item + 4 + 4 + (4 if s.pattern == "original" else 0))
    return rows * per_row


def estimate(model: str, s: RunSettings, device: str = "cuda", both_checkpointing: bool = True,
             with_prediction: bool = True) -> MemoryEstimate:
    """The run's peak per device. `both_checkpointing`: also simulate the other checkpointing
    setting, to show what it would change (a second training simulation). `with_prediction`:
    also the evaluation's peak (a run without --do_eval / --do_predict generates nothing)."""
    config = glm_config(model)
    peak = simulate_training(config, s, checkpointing=s.checkpointing)
    other = simulate_training(config, s, checkpointing=not s.checkpointing) if both_checkpointing else None
    on, off = (peak, other) if s.checkpointing else (other, peak)
    trainable = peak["trainable_parameters"]
    weights = peak.get("Parameter", 0) - trainable + peak.get("Buffer", 0)
    train_state = trainable + peak.get("Gradient", 0) + peak.get("Optstate", 0)
    acts, temp = peak.get("Activation", 0), peak.get("Temp", 0)
    unsharded = weights + train_state
    note = ""
    n = max(1, s.num_gpus)
    if s.sharding in ("fsdp", "zero3") and n > 1:
        # Parameters, gradients and optimizer state split N ways; one layer's parameters are
        # gathered whole while it runs (plus the next one prefetched).
        per_layer = (weights + trainable) // max(1, config.num_hidden_layers)  # all parameters, frozen or not
        weights, train_state = weights // n + 2 * per_layer, train_state // n
        note = f"{s.sharding} over {n} processes: parameters, gradients and optimizer state / {n}"
    elif s.sharding == "zero2" and n > 1:
        train_state = trainable + (train_state - trainable) // n
        note = f"zero2 over {n} processes: gradients and optimizer state / {n}"
    elif n > 1:
        train_state += trainable  # DDP's gradient buckets: a second copy of the gradients
        note = f"DDP over {n} processes: each holds all of this, plus its gradient buckets"
    pred = simulate_prediction(config, s) if with_prediction else {}
    both = lambda snap: None if snap is None else snap.get("Activation", 0) + snap.get("Temp", 0)
    return MemoryEstimate(
        weights=weights, trainable=train_state, activations=acts, workspace=temp, logits=logits_bytes(config, s),
        activations_with_checkpointing=both(on), activations_without_checkpointing=both(off),
        prediction_peak=pred.get("Total"), generation_cache=pred.get("generation_cache"),
        # (sharding and DDP buckets change the model states by the same bytes in the reserve)
        reserved=max(peak["reserved"] + weights + train_state - unsharded, pred.get("reserved", 0)),
        sharding_note=note,
        context=CUDA_CONTEXT_BYTES if device == "cuda" else 0)


def format_estimate(e: MemoryEstimate, s: RunSettings) -> str:
    g = lambda b: "-" if b is None else f"{b / GIB:.2f} GiB"
    quant = f" int{s.quantization_bit}" if s.quantization_bit else ""
    what = {"ptuning": f"P-tuning, prefix {s.pre_seq_len}", "lora": f"LoRA rank {s.lora_rank}",
            "full": "full fine-tuning"}[s.method]
    rows = [("weights", e.weights), ("trainable params + gradients + optimizer", e.trainable),
            ("activations (saved for backward)", e.activations), ("workspace (temporaries at the peak)", e.workspace),
            ("  the loss head's logits (within the two above)", e.logits), ("training peak", e.training_peak),
            ("  activations + workspace, checkpointing on", e.activations_with_checkpointing),
            ("  activations + workspace, checkpointing off", e.activations_without_checkpointing),
            (f"prediction peak (batch {s.eval_batch})", e.prediction_peak),
            ("  of which the generation cache", e.generation_cache)]
    rows.append(("live tensors at the peak", e.tensor_peak))
    if e.context:
        rows += [("reserved by CUDA's caching allocator", e.reserved), ("CUDA context (not tensors)", e.context),
                 ("total, as nvidia-smi shows it", e.total)]
    head = (f"memory estimate per device: {what}, batch {s.batch} x {s.row_length} tokens, {s.dtype}{quant}, "
            f"checkpointing {'on' if s.checkpointing else 'off'}"
            f"{', the original work pattern' if s.pattern == 'original' else ''}")
    lines = [head] + [f"  {name:<46} {g(b):>10}" for name, b in rows]
    if e.sharding_note:
        lines.append(f"  ({e.sharding_note})")
    return "\n".join(lines)


def settings_from_args(model_args, data_args, training_args, num_gpus: int | None = None,
                       device: str | None = None) -> RunSettings:
    """The RunSettings of main.py's parsed flags, as main.load_model / train() would run them."""
    device = device or training_args.device.type
    method = "lora" if model_args.lora_rank else "ptuning" if model_args.pre_seq_len else "full"
    if method == "full" and model_args.ptuning_checkpoint:  # training on from a saved prefix or adapter
        from .model import checkpoint_kind

        method = {"lora": "lora", "prefix": "ptuning"}.get(checkpoint_kind(model_args.ptuning_checkpoint), "full")
    from .model import base_dtype

    dtype = str(base_dtype(training_args, method == "full", device)).replace("torch.", "")
    autocast = ("bfloat16" if training_args.bf16 else "float16" if training_args.fp16 else None) \
        if method == "full" else None
    zero = zero_stage(training_args.deepspeed)
    sharding = "fsdp" if training_args.fsdp else f"zero{zero}" if zero in (2, 3) else "none"
    from .lora import target_modules

    return RunSettings(
        method=method, batch=training_args.per_device_train_batch_size, source=data_args.max_source_length,
        target=data_args.max_target_length, pre_seq_len=model_args.pre_seq_len or 0,
        prefix_projection=model_args.prefix_projection, lora_rank=model_args.lora_rank or 8,
        lora_targets=target_modules(model_args.lora_target), lora_dropout=model_args.lora_dropout, dtype=dtype,
        autocast=autocast, quantization_bit=model_args.quantization_bit,
        checkpointing=bool(training_args.gradient_checkpointing or device == "cuda"),
        num_gpus=num_gpus or int(os.environ.get("WORLD_SIZE", "1")), sharding=sharding,
        eval_batch=training_args.per_device_eval_batch_size,
        eval_new_tokens=data_args.val_max_target_length or data_args.max_target_length)


def zero_stage(deepspeed) -> int | None:
    """The ZeRO stage of a --deepspeed config (a path or a dict)."""
    if not deepspeed:
        return None
    if isinstance(deepspeed, dict):
        config = deepspeed
    else:
        with open(deepspeed, encoding="utf-8") as f:
            config = json.load(f)
    return (config.get("zero_optimization") or {}).get("stage")


def check_before_training(model_args, data_args, training_args, log, device: str | None = None) -> MemoryEstimate | None:
    """main.py, before loading the model: log the estimate; on CUDA, stop with one line when it
    exceeds the device's free memory (--skip_memory_check to try anyway)."""
    device = device or training_args.device.type
    s = settings_from_args(model_args, data_args, training_args, device=device)
    try:
        e = estimate(model_args.model_name_or_path, s, device=device, both_checkpointing=False,
                     with_prediction=training_args.do_eval or training_args.do_predict)
    except Exception as exc:  # an estimate that cannot be made never stops a run
        log(f"memory estimate unavailable ({type(exc).__name__}: {str(exc)[:200]})")
        return None
    if training_args.process_index == 0:
        log(format_estimate(e, s))
    if device == "cuda" and not model_args.skip_memory_check:
        free, total = torch.cuda.mem_get_info()
        # Live tensors, not the reserve: the allocator frees its cache and retries before it fails.
        # The context is already taken from `free`.
        need = e.tensor_peak
        if need > free:
            raise ValueError(
                f"this run needs about {need / GIB:.1f} GiB per GPU and {torch.cuda.get_device_name()} has "
                f"{free / GIB:.1f} of {total / GIB:.1f} GiB free (estimate above): lower "
                f"--per_device_train_batch_size (raise --gradient_accumulation_steps to keep the batch), "
                f"--max_source_length / --max_target_length, or add --quantization_bit 4; "
                f"--skip_memory_check runs it anyway")
    return e


def _parser():
    from transformers import HfArgumentParser, Seq2SeqTrainingArguments

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from arguments import DataTrainingArguments, ModelArguments

    return HfArgumentParser((ModelArguments, DataTrainingArguments, Seq2SeqTrainingArguments))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description="The peak accelerator memory of a run, by part, from its main.py flags (others are ignored).",
        epilog="--model_name_or_path takes a ChatGLM folder, its config.json, or " + ", ".join(SHAPES))
    ap.add_argument("--num_gpus", type=int, default=1, help="processes (DDP, or the shards of FSDP / ZeRO)")
    ap.add_argument("--sharding", choices=["none", "fsdp", "zero2", "zero3"], default=None,
                    help="default: from --fsdp / --deepspeed")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--pattern", choices=["ours", "original"], default="ours",
                    help="original: THUDM's ptuning code's work pattern (logits at every position, in fp32)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON (bytes)")
    own, rest = ap.parse_known_args(argv)
    if not any(a.split("=")[0] in ("--train_file", "--validation_file", "--test_file") for a in rest):
        rest += ["--train_file", "unused.json"]  # main.py's arguments want a data file; none is read here
    # transformers refuses --bf16 / --fp16 on a machine without support for them; the estimate is
    # for the machine the run will have, so the flags are read, then set after the checks.
    half = {flag: flag in rest for flag in ("--bf16", "--fp16")}
    rest = [a for a in rest if a not in half]
    model_args, data_args, training_args, _ = _parser().parse_args_into_dataclasses(
        args=rest + ["--output_dir", "/tmp/chatglm-memory-unused"], return_remaining_strings=True)
    training_args.bf16, training_args.fp16 = half["--bf16"], half["--fp16"]
    if not model_args.model_name_or_path:
        raise ValueError("--model_name_or_path is required (a ChatGLM folder, its config.json, or a shape name)")
    from arguments import check_training_numbers

    check_training_numbers(training_args)
    s = settings_from_args(model_args, data_args, training_args, own.num_gpus, own.device)
    s.pattern = own.pattern
    if own.sharding:
        s.sharding = own.sharding
    # Sharded weights generate nothing during training (train.sh turns evaluation off for them).
    sharded = s.sharding in ("fsdp", "zero3") and s.num_gpus > 1
    e = estimate(model_args.model_name_or_path, s, device=own.device, with_prediction=not sharded)
    if own.json:
        print(json.dumps({"settings": asdict(s), **asdict(e), "training_peak": e.training_peak,
                          "tensor_peak": e.tensor_peak, "total": e.total}, indent=2))
    else:
        print(format_estimate(e, s))


if __name__ == "__main__":
    from .cli import run_cli

    run_cli(main, "chatglm.memory")
