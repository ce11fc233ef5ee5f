"""Serve a base ChatGLM and its tuned checkpoints over OpenAI's HTTP API.

    python -m chatglm.serve --model_name_or_path M --checkpoint NAME=DIR [--checkpoint NAME2=DIR2 ...]
    bash serve.sh                                  # the embedded demo's best checkpoint, 127.0.0.1:8000

The first checkpoint is the default model (a P-tuning prefix or a LoRA adapter); the others are
P-tuning prefixes run beside it; "base" is the model without any. Every request in flight is a
row of one continuous batch of --max_batch slots. SIGTERM: requests in flight finish, new ones
get 503, then the process exits 0.
"""
from __future__ import annotations

import argparse
import logging
import os
import threading
import time

from transformers.hf_argparser import string_to_bool

logger = logging.getLogger("chatglm.serve")


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m chatglm.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model_name_or_path", default="output/tiny-chatglm2")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="[NAME=]DIR",
                    help="a checkpoint-N folder or a run folder (its best checkpoint), served as NAME (default: "
                         "the run's folder name); repeat for more; the first is the default model")
    ap.add_argument("--host", default="127.0.0.1", help="the address to bind (default: this machine only)")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api_key", default=os.environ.get("API_KEY"),
                    help="require `Authorization: Bearer KEY` (default: $API_KEY; none: open)")
    ap.add_argument("--max_batch", type=int, default=32, help="the engine's slots: requests generated at once")
    ap.add_argument("--max_source_length", type=int, default=700, help="prompts are cut to this many tokens "
                                                                       "from the left, as evaluation does")
    ap.add_argument("--max_new_tokens", type=int, default=196, help="the default max_tokens")
    ap.add_argument("--constrained_decoding", type=string_to_bool, default=True, metavar="true|false",
                    help="PromptCBLUE prompts answered only in the form the official parser accepts (per request: "
                         '"constrained_decoding": false)')
    ap.add_argument("--version", default="v2", choices=["v1", "v2"], help="PromptCBLUE version of the prompts")
    ap.add_argument("--quantization_bit", type=int, default=None)
    ap.add_argument("--model_family", default=None, choices=["chatglm2", "chatglm3", "glm4"])
    ap.add_argument("--prompt_format", default=None, choices=["rounds", "roles", "plain"])
    args = ap.parse_args(argv)
    if args.max_batch < 1:
        ap.error("--max_batch must be at least 1")
    return args


def served_name(spec: str) -> tuple[str | None, str]:
    """(NAME, DIR) of a --checkpoint value."""
    if "=" in spec and not os.path.exists(spec):
        name, path = spec.split("=", 1)
        return name, path
    return None, spec


def load(args):
    """(model, tokenizer, engine, served names -> adapter)."""
    from ..checkpoint import run_checkpoint
    from ..generation import TUNED, engine_for
    from ..model import checkpoint_prefix_key_values
    from ..tokenizer import load_tokenizer
    from ..tuned import load_for_inference, load_tuned

    specs = [served_name(s) for s in args.checkpoint]
    names, paths = [], []
    for name, path in specs:
        if not os.path.isdir(path):
            raise ValueError(f"--checkpoint {path}: no such folder")
        found = run_checkpoint(path) or path
        if name is None:
            run = path if found != path else os.path.dirname(os.path.normpath(path))
            name = os.path.basename(os.path.normpath(run))
            if name in names or name == "base":
                name = f"{name}-{os.path.basename(os.path.normpath(found))}"
        if name in names or name == "base":
            raise ValueError(f"--checkpoint: the name {name} is given twice (or is 'base')")
        names.append(name)
        paths.append(found)
    if paths:
        model, tok, paths[0] = load_tuned(args.model_name_or_path, paths[0], args.quantization_bit,
                                          args.model_family, args.prompt_format)
    else:
        if not os.path.isdir(args.model_name_or_path):
            raise ValueError(f"{args.model_name_or_path}: no such model folder")
        model = load_for_inference(args.model_name_or_path, None, args.quantization_bit)
        tok = load_tokenizer(args.model_name_or_path, args.prompt_format, args.model_family)
    model.eval()
    engine = engine_for(model, args.max_batch)
    served = {}
    for i, (name, path) in enumerate(zip(names, paths)):
        if i == 0:
            served[name] = TUNED
        else:
            engine.add_prefix(name, checkpoint_prefix_key_values(model, path))
            served[name] = name
        logger.info("serving %s as %r", path, name)
    served["base"] = None
    return model, tok, engine, served


class GracefulServer:
    """uvicorn's server with a drain on SIGTERM/SIGINT: new requests get 503 while those in
    flight finish; then it shuts down and the process exits 0. A second signal stops at once."""

    def __init__(self, app, state, host: str, port: int):
        import uvicorn

        state_ref = state

        class _Server(uvicorn.Server):
            def handle_exit(self, sig, frame):
                if state_ref.draining:  # a second signal: now
                    return super().handle_exit(sig, frame)
                state_ref.draining = True
                logger.info("signal %s: finishing %d request(s) in flight, refusing new ones", sig,
                            state_ref.worker.in_flight)
                threading.Thread(target=self._drain, daemon=True).start()

            def _drain(self):
                while not state_ref.worker.idle:
                    time.sleep(0.05)
                self.should_exit = True

        self.server = _Server(uvicorn.Config(app, host=host, port=port, log_level="info", timeout_keep_alive=5,
                                             timeout_graceful_shutdown=30))

    def run(self) -> None:
        self.server.run()


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s - %(levelname)s - %(name)s - %(message)s")
    from ..constraint import engine_for as grammar_engine_for
    from .app import ServerState, create_app
    from .worker import EngineWorker

    model, tok, engine, served = load(args)
    worker = EngineWorker(engine)
    state = ServerState(tok, worker, served, model.config.max_position_embeddings, args.max_source_length,
                        args.max_new_tokens, grammar_engine_for(tok, model.config.vocab_size), args.constrained_decoding,
                        args.version, args.api_key,
                        prefix_lengths={a: engine.adapters[a].prefix_len for a in engine.adapters})
    worker.start()
    logger.info("models: %s; http://%s:%d/v1 (%s)", ", ".join(served), args.host, args.port,
                "API key required" if args.api_key else "no API key")
    try:
        GracefulServer(create_app(state), state, args.host, args.port).run()
    finally:
        worker.stop()


if __name__ == "__main__":
    from ..cli import run_cli

    run_cli(main, "chatglm.serve")
