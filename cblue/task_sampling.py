"""--task_sampling: which task each training record is drawn from.

PromptCBLUE's tasks range from a few hundred to many thousand records, and the overall score is
the plain mean over tasks, so a small task weighs as much as a large one but is seen far less.
A task's weight is, for n_t records:

    proportional     n_t                 (each record about once an epoch, as plain shuffling)
    uniform          1                   (every task as often; small tasks' records repeat)
    temperature:T    n_t ** (1 / T)      (between the two: T=1 proportional, T->inf uniform)

An epoch is len(dataset) draws: each draw picks a task by weight, then that task's next record
from a shuffled order (reshuffled when it runs out), so within a task records repeat only after
all have been seen. The draws depend only on (seed, epoch): a resumed run, which skips the
batches it has trained on, sees exactly the batches it would have seen.
"""
from __future__ import annotations

import torch
from torch.utils.data import Sampler

MODES = ("proportional", "uniform", "temperature:T")


def parse_mode(mode: str) -> float:
    """The temperature a mode means: proportional 1, uniform inf, temperature:T T > 0."""
    if mode == "proportional":
        return 1.0
    if mode == "uniform":
        return float("inf")
    if mode.startswith("temperature:"):
        try:
            t = float(mode.split(":", 1)[1])
        except ValueError:
            t = 0.0
        if t > 0:
            return t
    raise ValueError(f"--task_sampling {mode!r}: choose one of {', '.join(MODES)} (T a number > 0)")


def task_weights(counts: dict[str, int], mode: str) -> dict[str, float]:
    """Each task's share of the draws (they sum to 1)."""
    t = parse_mode(mode)
    raw = {task: (1.0 if t == float("inf") else n ** (1.0 / t)) for task, n in counts.items()}
    total = sum(raw.values())
    return {task: w / total for task, w in raw.items()}


class TaskSampler(Sampler[int]):
    """Row indices for a training epoch, drawn by task (see the module docstring).
    `tasks[i]` is row i's task ("" for records without one: one group)."""

    def __init__(self, tasks: list[str], mode: str, seed: int, num_samples: int | None = None):
        self.names = sorted(set(tasks))
        self.rows = {name: [i for i, t in enumerate(tasks) if t == name] for name in self.names}
        self.weights = task_weights({n: len(r) for n, r in self.rows.items()}, mode)
        self.mode, self.seed, self.epoch = mode, seed, 0
        self.num_samples = len(tasks) if num_samples is None else num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        w = torch.tensor([self.weights[n] for n in self.names], dtype=torch.float64)
        picks = torch.multinomial(w, self.num_samples, replacement=True, generator=g).tolist()
        orders = {n: [] for n in self.names}
        for p in picks:
            name = self.names[p]
            if not orders[name]:  # this task's records, freshly shuffled, when the last order is used up
                rows = self.rows[name]
                orders[name] = [rows[j] for j in torch.randperm(len(rows), generator=g).tolist()][::-1]
            yield orders[name].pop()

    def shares(self) -> list[tuple[str, int, float, float]]:
        """(task, records, share of the draws, expected passes over the task's records per epoch)."""
        return [(n, len(self.rows[n]), self.weights[n], self.weights[n] * self.num_samples / len(self.rows[n]))
                for n in self.names]

    def describe(self) -> str:
        lines = [f"--task_sampling {self.mode}: {self.num_samples} draws an epoch over {len(self.names)} tasks"]
        for name, n, share, passes in self.shares():
            lines.append(f"  {name or '(no task)':<14} {n:>6} records  {100 * share:5.1f}% of draws  "
                         f"{passes:5.2f} passes an epoch")
        return "\n".join(lines)

