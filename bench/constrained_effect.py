"""Free vs constrained decoding of one checkpoint, per task: share of valid answers and score.

    CONSTRAINED=0 bash evaluate.sh && bash evaluate.sh          # eval-N-free/ and eval-N/
    python bench/constrained_effect.py output/RUN/eval-N-free output/RUN/eval-N

Reads the two runs' scores.json (main.py writes `valid_answers` and `decoding` there) and
prints a markdown table plus the JSON of it.
"""
import json
import os
import sys

from _util import report


def load(folder):
    with open(os.path.join(folder, "scores.json"), encoding="utf-8") as f:
        return json.load(f)


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
    report({"bench": "constrained_effect", "free": free_dir, "constrained": constrained_dir,
            "overall_free": free["score"], "overall_constrained": cons["score"], "tasks": rows})


if __name__ == "__main__":
    main()
