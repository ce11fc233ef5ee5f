"""Command-line flags. Every flag of THUDM's ChatGLM2-6B ptuning/arguments.py keeps its name
and meaning; flags added here say so in their help. Training flags are transformers'
Seq2SeqTrainingArguments, plus the few that transformers 5 removed but old scripts still pass.
"""
from dataclasses import dataclass, field
from typing import Optional


def check_range(owner, name: str, low=None, high=None, allowed=None, low_open: bool = False) -> None:
    """A number flag outside its range is a user error, one line naming the flag (exit 2):
    `--max_source_length -5` would otherwise train on nothing, silently. None means unset."""
    value = getattr(owner, name)
    if value is None:
        return
    if allowed is not None:
        if value not in allowed:
            raise ValueError(f"--{name} {value}: must be one of {', '.join(map(str, allowed))}")
        return
    if (low is not None and (value <= low if low_open else value < low)) or (high is not None and value > high):
        span = (f"> {low}" if low_open else f">= {low}") if high is None else \
            f"in {'(' if low_open else '['}{low}, {high}]"
        raise ValueError(f"--{name} {value}: must be {span}")


@dataclass
class ModelArguments:
    model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "An original THUDM chatglm2-6b, chatglm3-6b or glm-4-9b folder (config.json, weights, "
                                        "tokenizer.model). Its .py files are never run."})
    ptuning_checkpoint: Optional[str] = field(
        default=None, metadata={"help": "A checkpoint-N folder to evaluate or predict with: a P-tuning v2 "
                                        "prefix (ours or the original's), a LoRA adapter (PEFT format, ours or "
                                        "trained on the original code), or a full fine-tune; recognised by its files."})
    config_name: Optional[str] = field(default=None, metadata={"help": "Kept for compatibility; unused."})
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Folder or tokenizer.model to use instead of the model's."})
    model_family: Optional[str] = field(
        default=None, metadata={"help": "Added: `chatglm2`, `chatglm3` or `glm4`, when the folder does not tell "
                                "(the family is otherwise recognised from its files and logged)."})
    prompt_format: Optional[str] = field(
        default=None, metadata={"help": "Added: the prompt around each input: `rounds` (ChatGLM2's [Round 1] 问/答), "
                                "`roles` (ChatGLM3 and GLM-4: <|user|>… <|assistant|>) or `plain` (the text alone, "
                                "for a base model); default: the model family's own (detected from the folder)."})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where `datasets` caches data."})
    use_fast_tokenizer: bool = field(default=True, metadata={"help": "Kept for compatibility; unused."})
    model_revision: str = field(default="main", metadata={"help": "Kept for compatibility; unused."})
    use_auth_token: bool = field(default=False, metadata={"help": "Kept for compatibility; unused."})
    resize_position_embeddings: Optional[bool] = field(
        default=None, metadata={"help": "Kept for compatibility; unused."})
    quantization_bit: Optional[int] = field(
        default=None, metadata={"help": "Quantize the frozen base model's linear weights to 8 or 4 bits."})
    pre_seq_len: Optional[int] = field(
        default=None, metadata={"help": "P-tuning v2 prefix length; without it the whole model is fine-tuned."})
    prefix_projection: bool = field(
        default=False, metadata={"help": "Pass the prefix through a two-layer MLP (P-tuning v2 variant)."})
    prefix_init: str = field(
        default="random", metadata={"help": "Added: how a fresh prefix starts: `random` (N(0, 1), the original) or "
                                            "`train_rows` (the keys and values the base model computes for the first "
                                            "training rows, prompt and answer, as if it had read them)."})
    lora_rank: Optional[int] = field(
        default=None, metadata={"help": "Added: train LoRA adapters of this rank (through PEFT) instead of a prefix; "
                                        "exclusive with --pre_seq_len."})
    lora_alpha: Optional[float] = field(
        default=None, metadata={"help": "Added: LoRA scaling numerator (scale = alpha / rank); default 2 x rank."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Added: dropout on the LoRA input."})
    lora_target: Optional[str] = field(
        default=None, metadata={"help": "Added: comma-separated layers to adapt, ours (q_proj,k_proj,v_proj,o_proj,"
                                        "gate_up_proj,down_proj) or the original's (query_key_value,dense,"
                                        "dense_h_to_4h,dense_4h_to_h); default all of them."})

    print_memory_estimate: bool = field(
        default=False, metadata={"help": "Added: print the memory estimate before training on a CPU too (train.sh "
                                         "passes it); on CUDA it is always printed and checked."})
    skip_memory_check: bool = field(
        default=False, metadata={"help": "Added: train even when the memory estimate printed before training "
                                         "(python -m chatglm.memory) exceeds the GPU's free memory."})

    def __post_init__(self):
        for name in ("pre_seq_len", "lora_rank"):
            check_range(self, name, 1)
        check_range(self, "quantization_bit", allowed=(4, 8))
        check_range(self, "prefix_init", allowed=("random", "train_rows"))
        check_range(self, "lora_alpha", 0, low_open=True)
        check_range(self, "lora_dropout", 0, 0.99)


@dataclass
class DataTrainingArguments:
    lang: Optional[str] = field(default=None, metadata={"help": "Kept for compatibility; unused."})
    dataset_name: Optional[str] = field(default=None, metadata={"help": "Kept for compatibility; unused."})
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Kept for compatibility; unused."})
    prompt_column: Optional[str] = field(default="input", metadata={"help": "Column holding the prompt."})
    response_column: Optional[str] = field(default="target", metadata={"help": "Column holding the answer."})
    history_column: Optional[str] = field(
        default=None, metadata={"help": "Column holding earlier [question, answer] rounds."})
    train_file: Optional[str] = field(default=None, metadata={"help": "Training data, jsonl."})
    validation_file: Optional[str] = field(default=None, metadata={"help": "Data for --do_eval, jsonl."})
    test_file: Optional[str] = field(default=None, metadata={"help": "Data for --do_predict, jsonl."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using the cache."})
    preprocessing_num_workers: Optional[int] = field(
        default=None, metadata={"help": "Processes used to tokenize."})
    max_source_length: Optional[int] = field(
        default=1024, metadata={"help": "Prompt length in tokens, `[gMASK] sop` included; longer prompts are "
                                        "truncated (see --source_truncation_side)."})
    max_target_length: Optional[int] = field(
        default=128, metadata={"help": "Answer length in tokens for training; also the generation budget."})
    val_max_target_length: Optional[int] = field(
        default=None, metadata={"help": "Answer length for eval/predict; defaults to --max_target_length."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Kept for compatibility; batches are always padded dynamically."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N train records."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Evaluate on N validation records, taken evenly over the tasks (the original: "
                                        "the first N)."})
    max_predict_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N test records."})
    num_beams: Optional[int] = field(default=None, metadata={"help": "Beam search width for generation."})
    ignore_pad_token_for_loss: bool = field(
        default=True, metadata={"help": "Kept for compatibility; padding never counts in the loss."})
    source_prefix: Optional[str] = field(default="", metadata={"help": "Text put before every prompt."})
    forced_bos_token: Optional[str] = field(default=None, metadata={"help": "Kept for compatibility; unused."})
    # --- added by this toolkit ---
    source_truncation_side: str = field(
        default="left", metadata={"help": "New. 'left' keeps `[gMASK] sop` and the END of a long prompt (where "
                                          "PromptCBLUE puts the question and options); 'right' is the original."})
    task_sampling: Optional[str] = field(
        default=None, metadata={"help": "New. Draw each training batch's records by task (task_dataset): "
                                        "proportional (to the task's records), uniform (every task as often) or "
                                        "temperature:T (weights n ** 1/T, between the two); default: plain "
                                        "shuffling, as the original."})

    def __post_init__(self):
        if self.train_file is None and self.validation_file is None and self.test_file is None:
            raise ValueError("Need a --train_file, --validation_file or --test_file.")
        if self.val_max_target_length is None:
            self.val_max_target_length = self.max_target_length
        for name in ("max_source_length", "max_target_length", "val_max_target_length", "max_train_samples",
                     "max_eval_samples", "max_predict_samples", "num_beams", "preprocessing_num_workers"):
            check_range(self, name, 1)
        if self.source_truncation_side not in ("left", "right"):
            raise ValueError("--source_truncation_side must be 'left' or 'right'")
        if self.task_sampling is not None:
            from cblue.task_sampling import parse_mode

            parse_mode(self.task_sampling)


@dataclass
class GenerationArguments:
    """New: how --do_eval/--do_predict generate. Greedy by default, so scores are reproducible."""
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling threshold (with --do_sample)."})
    top_k: int = field(default=0, metadata={"help": "Top-k sampling (with --do_sample; 0 = off)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do_sample)."})
    repetition_penalty: float = field(default=1.0, metadata={"help": "Penalty for repeated tokens (1 = off)."})
    max_new_tokens: Optional[int] = field(
        default=None, metadata={"help": "Tokens to generate at most; defaults to --val_max_target_length."})
    version: Optional[str] = field(
        default=None, metadata={"help": "PromptCBLUE scoring version v1|v2; detected from task names if unset."})
    compare_base: bool = field(
        default=False, metadata={"help": "Also evaluate the base model without the prefix, and compare."})
    constrained_decoding: bool = field(
        default=True, metadata={"help": "Constrain every answer of a closed-set PromptCBLUE task to what the official "
                                        "parser accepts, with labels from the record's answer_choices (or the "
                                        "prompt's own option line); `--constrained_decoding false` writes free "
                                        "text, as the original."})
    compile_generation: Optional[bool] = field(
        default=None, metadata={"help": "torch.compile the decode step (CUDA graphs on CUDA). Default: off (the "
                                        "eager step the tests run); on a CPU compiling takes longer than it saves."})

    def __post_init__(self):
        check_range(self, "max_new_tokens", 1)
        check_range(self, "top_p", 0, 1, low_open=True)
        check_range(self, "top_k", 0)
        check_range(self, "temperature", 0, low_open=True)
        check_range(self, "repetition_penalty", 0, low_open=True)


def check_training_numbers(args) -> None:
    """transformers' TrainingArguments accepts a batch of 0 or -3 and fails later in a traceback."""
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        check_range(args, name, 1)
    if args.max_steps != -1:
        check_range(args, "max_steps", 1)
    check_range(args, "num_train_epochs", 0, low_open=True)
    check_range(args, "learning_rate", 0)
    for name in ("save_steps", "eval_steps", "logging_steps"):
        check_range(args, name, 0, low_open=True)
    check_range(args, "save_total_limit", 1)


@dataclass
class LegacyTrainingArguments:
    """Flags transformers 5 dropped from TrainingArguments that old train.sh files still pass."""
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Start training afresh even if --output_dir holds checkpoints; without "
                                         "it an interrupted run resumes from its last complete checkpoint."})
    logging_dir: Optional[str] = field(default=None, metadata={"help": "TensorBoard log folder."})
    group_by_length: bool = field(
        default=False, metadata={"help": "Batch rows of similar length together (less padding); the same as "
                                         "--train_sampling_strategy group_by_length."})
