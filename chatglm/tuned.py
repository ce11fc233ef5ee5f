"""What the interactive tools (chat.py, web_demo.py) load: a base model and a tuned checkpoint,
the newest one under output/ when none is named (embedded demo only)."""
from __future__ import annotations

import glob
import os

import torch
from transformers.hf_argparser import string_to_bool  # what main.py's flags accept

from .checkpoint import inference_dtype, is_complete_checkpoint, run_checkpoint
from .model import ChatGLM, checkpoint_kind
from .tokenizer import load_tokenizer

EMBEDDED_MODEL = "output/tiny-chatglm2"


def add_model_flags(parser) -> None:
    """The flags chat.py and web_demo.py share: which base, which tuned checkpoint, how loaded."""
    parser.add_argument("--model_name_or_path", default=EMBEDDED_MODEL)
    parser.add_argument("--ptuning_checkpoint", default=None,
                        help="a checkpoint-N folder (P-tuning prefix or LoRA adapter) or a run folder (its best "
                             "checkpoint when recorded, else its newest); default: the newest run under output/ "
                             "(embedded model only)")
    parser.add_argument("--model_family", default=None, choices=["chatglm2", "chatglm3", "glm4"],
                        help="when the folder does not tell (default: recognised from its files)")
    parser.add_argument("--prompt_format", default=None, choices=["rounds", "roles", "plain"],
                        help="default: the family's own chat prompt")
    parser.add_argument("--max_source_length", type=int, default=700)
    parser.add_argument("--quantization_bit", type=int, default=None)
    parser.add_argument("--constrained_decoding", type=string_to_bool, default=True, metavar="true|false",
                        help="answers of closed-set PromptCBLUE prompts only in the form the official parser "
                             "accepts, with labels from the prompt's options (default true; false: free text)")



def newest_checkpoint(model_dir: str, output_root: str = "output") -> str | None:
    """The checkpoint of the newest run under output/ (its best one when the run recorded it,
    else its newest), for the embedded model only: for any other model the user names the
    checkpoint (or its run folder)."""
    if os.path.normpath(model_dir) != os.path.normpath(EMBEDDED_MODEL):
        return None
    found = [d for d in glob.glob(os.path.join(output_root, "*", "checkpoint-*")) if is_complete_checkpoint(d)]
    return run_checkpoint(os.path.dirname(max(found, key=os.path.getmtime))) if found else None


def load_tuned(model_dir: str, checkpoint: str | None, quantization_bit: int | None = None,
               model_family: str | None = None, prompt_format: str | None = None) -> tuple[ChatGLM, object, str]:
    """(model with the checkpoint's prefix or LoRA adapter, tokenizer, checkpoint path), in the
    folder's own precision (see load_for_inference). `checkpoint` may be a run's output folder: its best checkpoint when the
    run recorded one, else its newest complete one."""
    checkpoint = checkpoint or newest_checkpoint(model_dir)
    if checkpoint:
        checkpoint = run_checkpoint(checkpoint) or checkpoint
    if not checkpoint:
        raise ValueError("no checkpoint to compare with: pass --ptuning_checkpoint (none found under output/; "
                         "`bash train.sh` makes one for the embedded model)")
    if not os.path.isdir(model_dir):
        raise ValueError(f"{model_dir}: no such model folder (run `bash train.sh` first for the embedded model, "
                         "or pass --model_name_or_path)")
    if checkpoint_kind(checkpoint) == "full":
        raise ValueError(f"{checkpoint} is a whole fine-tuned model: the base-vs-tuned view needs a prefix or a "
                         "LoRA adapter on the same weights; evaluate it with --model_name_or_path instead")
    model = load_for_inference(model_dir, checkpoint, quantization_bit)
    return model, load_tokenizer(model_dir, prompt_format, model_family), checkpoint


def load_for_inference(model_dir: str, checkpoint: str | None = None, quantization_bit: int | None = None) -> ChatGLM:
    """The model (and checkpoint) on the GPU if there is one, in the folder's own precision
    (chatglm.checkpoint.inference_dtype), after the memory check says it fits."""
    from .memory import require_fit

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = inference_dtype(model_dir, device)
    require_fit(model_dir, dtype, device, quantization_bit, flags="--quantization_bit")
    return ChatGLM.from_pretrained(model_dir, ptuning_checkpoint=checkpoint, device=device, dtype=dtype,
                                   quantization_bit=quantization_bit).eval()
