"""Free vs constrained decoding of one checkpoint, per task: share of valid answers and score.

    CONSTRAINED=0 bash evaluate.sh && bash evaluate.sh          # eval-N-free/ and eval-N/
    python bench/constrained_effect.py output/RUN/eval-N-free output/RUN/eval-N

Reads the two runs' scores.json (main.py writes `valid_answers` and `decoding` there) and
test_predictions.json, and prints a markdown table plus the JSON of it, with how many answers
that were valid as free text came out the same under the constraint.
"""
import json
import os
import sys

from _util import report


def load(folder):
    with open(os.path.join(folder, "scores.json"), encoding="utf-8") as f:
        return json.load(f)


def predictions(folder):
    with open(os.path.join(folder, "test_predictions.json"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def mentions_in_input(task, text, options, prompt, version):
    """For the tasks whose mentions the constraint copies from the input: are all of them there?"""
    from cblue.answer_grammar import SPAN_TASKS
    from cblue.postprocess import structure

    if task not in SPAN_TASKS:
        return True
    items = structure(task, text, options, version)
    words = [x.get("entity") or "" for x in items] + [x.get(k) or "" for x in items for k in ("subject", "object")]
    return all(w in prompt for w in words if isinstance(w, str))


def unchanged_when_valid(free_dir, constrained_dir, version):
    """(valid free answers the constraint left as they were, valid free answers, of which
    with a mention that is not in the input: what the span constraint replaces)."""
    from cblue.prompt_options import record_task_options
    from cblue.validity import answer_is_valid

    same = valid = not_spans = 0
    for f, c in zip(predictions(free_dir), predictions(constrained_dir)):
        task, options = record_task_options(f, version)
        if answer_is_valid(task, f["target"], options, version):
            valid += 1
            same += f["target"] == c["target"]
            not_spans += not mentions_in_input(task, f["target"], options, f["input"], version)
    return same, valid, not_spans


def main():
    free_dir, constrained_dir = sys.argv[1:3]
    free, cons = load(free_dir), load(constrained_dir)
    assert free.get("decoding") == "free" and cons.get("decoding") == "constrained", "pass the free run first"
    from cblue.tasks import main_metric

    rows = []
    print("| task | metric | valid (free) | valid (constrained) | score (free) | score (constrained) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for task, metrics in free["tasks"].items():
        m = main_metric(task)
        vf, vc = free["valid_answers"].get(task), cons["valid_answers"].get(task)
        sf, sc = metrics[m], cons["tasks"][task][m]
        rows.append({"task": task, "metric": m, "valid_free": vf, "valid_constrained": vc, "score_free": sf,
                     "score_constrained": sc})
        pct = lambda v: "–" if v is None else f"{v:.0%}"
        print(f"| {task} | {m} | {pct(vf)} | {pct(vc)} | {sf:.4f} | {sc:.4f} |")
    print(f"| **overall** | mean | | | **{free['score']:.4f}** | **{cons['score']:.4f}** |")
    same, valid, not_spans = unchanged_when_valid(free_dir, constrained_dir, free["version"])
    print(f"\nValid free answers unchanged by the constraint: {same}/{valid} ({not_spans} of the valid ones name "
          "a mention that is not in the input, which the span constraint of CMeEE-V2/CHIP-MDCFNPC/CMeIE replaces)")
    report({"bench": "constrained_effect", "free": free_dir, "constrained": constrained_dir,
            "overall_free": free["score"], "overall_constrained": cons["score"],
            "valid_free_answers_unchanged": [same, valid], "valid_free_answers_with_mentions_not_in_input": not_spans, "tasks": rows})


if __name__ == "__main__":
    main()
