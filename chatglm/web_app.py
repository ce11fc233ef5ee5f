"""The web demo's page (gradio): one prompt, the base and the tuned answers side by side, both
streamed token by token.

Examples come from a PromptCBLUE file, a few per task; picking one fills the prompt, and once
both answers are in, each gets the official score of its task against the example's target.
The PromptCBLUE side (`encode`: prompt text -> ids as training built them; `scorer`: record,
answer -> (metric, value)) is handed in by the entry script, so this package does not depend
on cblue. The model is loaded once by the caller. One generation runs at a time: the base
answer is the same weights with the prefix set aside, which concurrent requests would trip over.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr

from .generation import NO_ANSWER, GenerationSettings, side_by_side

ALL_TASKS = "all tasks"


def example_rows(examples: list[dict], task: str) -> tuple[list[list[str]], list[int]]:
    """The table rows (task, prompt) shown for a task filter, and which examples they are."""
    picked = [i for i, r in enumerate(examples) if task in (ALL_TASKS, r.get("task_dataset"))]
    return [[examples[i].get("task_dataset", ""), examples[i]["input"]] for i in picked], picked


def score_lines(record: dict | None, prompt: str, base: str, tuned: str,
                scorer: Callable[[dict, str], tuple[str, float]] | None) -> str:
    """Markdown under the answers: the target and each answer's official score, when the prompt
    is an example's (unchanged) and it has a target."""
    if not record or not scorer or record["input"] != prompt or not record.get("target"):
        return ""
    metric, base_score = scorer(record, base)
    _, tuned_score = scorer(record, tuned)
    return (f"**Target** ({record.get('task_dataset', '')}): {record['target']}\n\n"
            f"| | official {metric} |\n|---|---|\n| base | {base_score:.3f} |\n| tuned | {tuned_score:.3f} |")


def build_app(model, tokenizer, examples: list[dict], encode: Callable[[str], list[int]],
              scorer: Callable[[dict, str], tuple[str, float]] | None, title: str,
              grammar_for: Callable[[str, dict | None], str | None] | None = None,
              constrained: bool = True) -> gr.Blocks:
    """`grammar_for(prompt, example record or None)`: the grammar answers are constrained to
    (None: free text), used while the page's "constrained" box is ticked."""
    tasks = [ALL_TASKS] + sorted({r.get("task_dataset", "") for r in examples} - {""})
    first_rows, first_picked = example_rows(examples, ALL_TASKS)

    def pick_task(task):
        rows, picked = example_rows(examples, task)
        return gr.Dataset(samples=rows), picked

    def pick_example(index, picked):
        record = examples[picked[index]]
        return record["input"], picked[index], "", "", ""

    def answer(prompt, chosen, max_new_tokens, sampling, temperature, top_p, constrain):
        if not prompt.strip():
            yield "", "", "Type a prompt or pick an example."
            return
        settings = GenerationSettings(max_new_tokens=int(max_new_tokens), do_sample=bool(sampling),
                                      temperature=temperature if sampling else 1.0, top_p=top_p if sampling else 1.0)
        record = examples[chosen] if chosen is not None else None
        grammar = grammar_for(prompt, record) if constrain and grammar_for else None
        base = tuned = ""
        for base, tuned in side_by_side(model, tokenizer, encode(prompt), settings, grammar):
            yield base, tuned, ""
        yield base or NO_ANSWER, tuned or NO_ANSWER, score_lines(record, prompt, base, tuned, scorer)

    with gr.Blocks(title=title) as app:
        gr.Markdown(f"## {title}")
        chosen = gr.State(None)  # index of the example the prompt came from
        picked = gr.State(first_picked)  # examples shown in the table, in order
        with gr.Row():
            with gr.Column(scale=3):
                prompt = gr.Textbox(label="Prompt", lines=6, elem_id="prompt")
                run = gr.Button("Generate", variant="primary", elem_id="run")
            with gr.Column(scale=1):
                max_new_tokens = gr.Slider(1, 512, value=128, step=1, label="max new tokens", elem_id="max_new_tokens")
                sampling = gr.Checkbox(False, label="sample (off: greedy, as evaluate.sh)", elem_id="sampling")
                temperature = gr.Slider(0.05, 2.0, value=0.95, step=0.05, label="temperature")
                top_p = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="top p")
                constrain = gr.Checkbox(constrained and grammar_for is not None, elem_id="constrained",
                                        label="constrained: only answers the official parser accepts (off: free text)")
        with gr.Row():
            base_box = gr.Textbox(label="Base model", lines=8, elem_id="base_answer")
            tuned_box = gr.Textbox(label="Tuned model", lines=8, elem_id="tuned_answer")
        scores = gr.Markdown(elem_id="scores")
        task = gr.Dropdown(tasks, value=ALL_TASKS, label="Examples of task", elem_id="task")
        table = gr.Dataset(components=[gr.Textbox(visible=False), gr.Textbox(visible=False)],
                           headers=["task", "prompt"], samples=first_rows, type="index", samples_per_page=10,
                           label="Examples (click one)", elem_id="examples")

        task.change(pick_task, [task], [table, picked])
        table.click(pick_example, [table, picked], [prompt, chosen, base_box, tuned_box, scores])
        run.click(answer, [prompt, chosen, max_new_tokens, sampling, temperature, top_p, constrain],
                  [base_box, tuned_box, scores], concurrency_limit=1)
    return app
