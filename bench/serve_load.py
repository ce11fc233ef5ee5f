"""Load on the OpenAI-compatible server: N concurrent `openai` clients sending real PromptCBLUE
dev prompts to 127.0.0.1, bounded in count and time.

    python bench/serve_load.py --model DIR [--checkpoint DIR] [--concurrency 1 8 32] [--requests 64]
        [--max_new_tokens 64] [--max_source_length 700] [--dtype float32]

Starts `python -m chatglm.serve` (32 slots) on a free local port, then for each concurrency
level sends the same --requests prompts (streamed, greedy) from that many client threads.
Reports requests/s, p50/p99 latency and time to first token, and checks every answer is
complete and equal to the offline one (the same prompts through chatglm.generation in this
process, before the load); none may be lost.
"""
import argparse
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from _util import ROOT, SHARED, read_jsonl, report


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def offline_answers(args, texts) -> list[str]:
    """What evaluation would answer: the server's prompt and grammar, generate() in this process."""
    import torch

    from cblue.answer_grammar import grammar_for_prompt
    from cblue.features import prompt_ids
    from chatglm.generation import GenerationSettings, constraint_for, generate
    from chatglm.model import ChatGLM
    from chatglm.tokenizer import load_tokenizer

    tok = load_tokenizer(args.model)
    model = ChatGLM.from_pretrained(args.model, ptuning_checkpoint=args.checkpoint,
                                     dtype=getattr(torch, args.dtype)).eval()
    prompts = [prompt_ids(tok, t, None, args.max_source_length, "left")[0] for t in texts]
    grammars = [grammar_for_prompt(t, None, "v1", tok.can_spell) for t in texts]
    out = generate(model, prompts, GenerationSettings(max_new_tokens=args.max_new_tokens), tok.stop_ids,
                   tok.pad_token_id, constraint_for(model, tok, grammars))
    return [tok.decode(o).strip() for o in out]


def one_level(client, model, texts, expected, concurrency, time_limit) -> dict:
    work = queue.Queue()
    for i in range(len(texts)):
        work.put(i)
    results, errors = {}, []
    start = time.perf_counter()

    def worker():
        while time.perf_counter() - start < time_limit:
            try:
                i = work.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            first, parts = None, []
            try:
                stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": texts[i]}],
                                                        temperature=0, stream=True)
                for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        first = first or time.perf_counter()
                        parts.append(chunk.choices[0].delta.content)
            except Exception as e:  # counted: a lost request fails the benchmark
                errors.append(f"{type(e).__name__}: {e}")
                continue
            end = time.perf_counter()
            results[i] = ("".join(parts), end - t0, (first or end) - t0)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    lat = sorted(r[1] for r in results.values())
    ttft = sorted(r[2] for r in results.values())

    def pct(xs, p):
        return round(xs[min(len(xs) - 1, int(p * len(xs)))], 3) if xs else None

    return {"concurrency": concurrency, "requests": len(texts), "completed": len(results), "errors": errors[:3],
            "equal_to_offline": sum(results[i][0] == expected[i] for i in results),
            "seconds": round(seconds, 2), "requests_per_second": round(len(results) / seconds, 3),
            "latency_p50_s": pct(lat, 0.5), "latency_p99_s": pct(lat, 0.99),
            "ttft_p50_s": pct(ttft, 0.5), "ttft_p99_s": pct(ttft, 0.99)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--checkpoint", default=None, help="a P-tuning checkpoint to serve (default: the base)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--max_source_length", type=int, default=700)
    ap.add_argument("--time_limit", type=float, default=900, help="seconds per level at most")
    args = ap.parse_args()

    import openai

    from cblue.dataset import stratified_sample

    records = stratified_sample(read_jsonl(os.path.join(SHARED, "data", "promptcblue", "dev.json")), args.requests)
    texts = [r["input"] for r in records]
    expected = offline_answers(args, texts)
    port = free_port()
    served = ["--checkpoint", f"tuned={args.checkpoint}"] if args.checkpoint else []
    proc = subprocess.Popen([sys.executable, "-m", "chatglm.serve", "--model_name_or_path", args.model, "--port",
                             str(port), "--max_batch", "32", "--max_source_length", str(args.max_source_length),
                             "--max_new_tokens", str(args.max_new_tokens), "--version", "v1", *served],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                urllib.request.urlopen(url + "/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=args.time_limit)
        model = "tuned" if args.checkpoint else "base"
        one_level(client, model, texts[:2], expected[:2], 1, args.time_limit)  # warm-up
        levels = [one_level(client, model, texts, expected, c, args.time_limit) for c in args.concurrency]
        for level in levels:
            print(json.dumps(level), file=sys.stderr, flush=True)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    base = levels[0]["requests_per_second"]
    report({"bench": "serve_load", "model": args.model, "checkpoint": args.checkpoint, "dtype": args.dtype,
            "max_new_tokens": args.max_new_tokens, "levels": levels,
            "speedup_over_one_client": {l["concurrency"]: round(l["requests_per_second"] / base, 2) for l in levels}})


if __name__ == "__main__":
    main()
