"""--task_sampling: the draws follow the weights, repeat a task's records only after all were
seen, depend only on (seed, epoch), and a bad mode is one clear error."""
from collections import Counter

import pytest

from cblue.dataset import stratified_sample
from cblue.task_sampling import TaskSampler, task_weights

# A skewed set: 600 / 300 / 60 / 40 records.
TASKS = ["A"] * 600 + ["B"] * 300 + ["C"] * 60 + ["D"] * 40


def shares(sampler):
    drawn = Counter(TASKS[i] for i in sampler)
    return {t: n / len(sampler) for t, n in drawn.items()}


@pytest.mark.parametrize("mode,expected", [
    ("proportional", {"A": 0.6, "B": 0.3, "C": 0.06, "D": 0.04}),
    ("uniform", {"A": 0.25, "B": 0.25, "C": 0.25, "D": 0.25}),
])
def test_shares_follow_the_weights(mode, expected):
    sampler = TaskSampler(TASKS, mode, seed=3, num_samples=20_000)
    assert task_weights(Counter(TASKS), mode) == pytest.approx(expected)
    for task, share in shares(sampler).items():
        assert share == pytest.approx(expected[task], abs=0.012), (task, share)


def test_temperature_lies_between_proportional_and_uniform():
    w = task_weights(Counter(TASKS), "temperature:2")
    # n ** (1/2): sqrt(600) : sqrt(300) : sqrt(60) : sqrt(40)
    total = sum(n ** 0.5 for n in (600, 300, 60, 40))
    assert w["D"] == pytest.approx(40 ** 0.5 / total)
    assert 0.04 < w["D"] < 0.25 and 0.25 < w["A"] < 0.6
    assert task_weights(Counter(TASKS), "temperature:1") == pytest.approx(task_weights(Counter(TASKS), "proportional"))


def test_a_task_repeats_a_record_only_after_all_were_drawn():
    sampler = TaskSampler(TASKS, "uniform", seed=0)
    d_rows = [i for i in sampler if TASKS[i] == "D"]  # about 250 draws of D's 40 records
    assert len(d_rows) > 120
    for start in range(0, len(d_rows) - 40, 40):
        assert len(set(d_rows[start:start + 40])) == 40


def test_draws_depend_only_on_seed_and_epoch():
    a, b = TaskSampler(TASKS, "temperature:2", seed=5), TaskSampler(TASKS, "temperature:2", seed=5)
    first = list(a)
    assert first == list(b) == list(a)  # a resumed run (a new sampler) replays the same order
    b.set_epoch(1)
    assert list(b) != first
    a.set_epoch(1)
    assert list(a) == list(b)
    assert list(TaskSampler(TASKS, "temperature:2", seed=6)) != first
    assert len(first) == len(TASKS) and len(a) == len(TASKS)


@pytest.mark.parametrize("mode", ["balanced", "temperature:0", "temperature:-1", "temperature:x", "temperature"])
def test_bad_mode_is_a_clear_error(mode):
    with pytest.raises(ValueError, match="--task_sampling .*proportional, uniform, temperature:T"):
        task_weights({"A": 1}, mode)


def test_stratified_sample_takes_every_task_in_turn():
    records = [{"task_dataset": t, "i": i} for i, t in enumerate(["A"] * 10 + ["B"] * 3 + ["C"] * 1)]
    picked = stratified_sample(records, 7)
    assert Counter(r["task_dataset"] for r in picked) == {"A": 3, "B": 3, "C": 1}
    assert [r["i"] for r in picked] == sorted(r["i"] for r in picked)  # file order kept
    assert [r["i"] for r in picked if r["task_dataset"] == "A"] == [0, 1, 2]  # each task from its start
    assert len(stratified_sample(records, 100)) == len(records)
