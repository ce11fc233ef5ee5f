"""COMPARE_BASE: base vs tuned report; chat.py with piped input."""
import json
import os
import subprocess
import sys

from cblue.compare import pick_examples
from conftest import ROOT, run_main

DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")


def test_compare_base_report(tiny_model, tiny_checkpoint, tmp_path):
    run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
              tiny_checkpoint, "--output_dir", str(tmp_path), "--max_source_length", "128", "--max_target_length",
              "24", "--per_device_eval_batch_size", "16", "--compare_base", "--report_to", "none"])
    base = json.load(open(tmp_path / "base" / "scores.json"))
    tuned = json.load(open(tmp_path / "scores.json"))
    report = (tmp_path / "comparison.md").read_text(encoding="utf-8")
    assert os.path.getsize(tmp_path / "comparison.png") > 10_000
    assert f"base {base['score']:.4f} → tuned {tuned['score']:.4f}" in report
    for task, metrics in tuned["tasks"].items():
        main = next(line for line in report.splitlines() if line.startswith(f"| {task} |"))
        assert f"| {base['tasks'][task][main.split('|')[2].strip()]:.4f} | {metrics[main.split('|')[2].strip()]:.4f} |" in main
        assert f"## {task}" in report
    # the base run is the same records without the prefix: its own full set of outputs
    assert len(open(tmp_path / "base" / "generated_predictions.txt").readlines()) == len(open(DEV).readlines())


def test_examples_are_chosen_reproducibly():
    records = [json.loads(l) for l in open(DEV, encoding="utf-8")]
    first = pick_examples(records, 3)
    assert first == pick_examples(list(records), 3)
    assert all(len(v) == 3 for v in first.values()) and len(first) == 18
    assert first != pick_examples(records[::-1], 3)  # depends on the records, not on luck


def test_chat_with_piped_input(tiny_model, tiny_checkpoint):
    rec = json.loads(open(DEV, encoding="utf-8").readline())
    stdin = json.dumps(rec, ensure_ascii=False) + "\n" + "头痛怎么办\\n答：\n"
    proc = subprocess.run([sys.executable, "chat.py", "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
                           tiny_checkpoint, "--max_new_tokens", "8"], input=stdin, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.count("── base") == 2 and out.count("── P-tuned") == 2
    assert f"问：{rec['input']}" in out and "问：头痛怎么办\n答：" in out


def test_chat_in_a_terminal(tiny_model, tiny_checkpoint):
    """Interactive use: a prompt, both answers, then an empty line quits."""
    import pty
    import select

    pid, fd = pty.fork()
    if pid == 0:  # the child: chat.py on a pseudo-terminal
        os.chdir(ROOT)
        os.execv(sys.executable, [sys.executable, "chat.py", "--model_name_or_path", tiny_model,
                                  "--ptuning_checkpoint", tiny_checkpoint, "--max_new_tokens", "4"])
    out = b""

    def read_until(marker: bytes, timeout: float = 240) -> None:
        nonlocal out
        import time

        end = time.time() + timeout
        while marker not in out and time.time() < end:
            if select.select([fd], [], [], 0.5)[0]:
                try:
                    out += os.read(fd, 4096)
                except OSError:
                    break

    read_until("问（".encode())
    os.write(fd, "头痛怎么办\n".encode())
    read_until("── P-tuned".encode())
    read_until("问（".encode(), timeout=60)
    os.write(fd, b"\n")
    _, status = os.waitpid(pid, 0)
    text = out.decode("utf-8", "replace")
    assert "问：头痛怎么办" in text and "── base" in text and "── P-tuned" in text
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_chat_names_a_prompts_file_that_is_not_utf8(tiny_model, tiny_checkpoint, tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_bytes("头痛怎么办\n".encode("utf-8") + "胸闷\n".encode("gbk"))
    proc = subprocess.run([sys.executable, "chat.py", "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
                           tiny_checkpoint, "--max_new_tokens", "4", "--file", str(bad)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{bad}:2: not UTF-8 text" in proc.stderr
    assert "问：头痛怎么办" in proc.stdout  # the good line before it was answered
