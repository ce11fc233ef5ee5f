"""Shared helpers of the benchmark scripts."""
import json
import os
import platform
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED = os.path.join(ROOT, "..", "shared")


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far: VmHWM, which (unlike ru_maxrss) does not
    carry over the parent's peak into a freshly exec'd child."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fastest(fn, repeats: int) -> float:
    """Seconds of the fastest of `repeats` calls of fn, after one warm-up call: on a shared
    machine a neighbour only ever slows a call down."""
    import time

    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads), {gpu}"


def default_model() -> str:
    """The golden tiny checkpoint when present (what the original was measured on), else the embedded one."""
    golden = os.path.join(SHARED, "golden", "chatglm2-tiny", "model")
    if os.path.isdir(golden):
        return golden
    from chatglm.tiny import build_tiny_model

    return build_tiny_model(os.path.join(ROOT, "PromptCBLUE", "train.json"), os.path.join(ROOT, "output", "tiny-chatglm2"))


def data_file(name: str, fallback: str) -> str:
    path = os.path.join(SHARED, "data", "promptcblue", name)
    return path if os.path.exists(path) else os.path.join(ROOT, "PromptCBLUE", fallback)


def read_jsonl(path: str, limit: int | None = None) -> list[dict]:
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line))
            if limit and len(out) >= limit:
                break
    return out


def report(result: dict) -> None:
    result["machine"] = machine()
    result["command"] = "python " + " ".join(sys.argv)
    print(json.dumps(result, ensure_ascii=False, indent=2))
