"""The OpenAI-compatible server (python -m chatglm.serve), through the real `openai` client:
answers equal main.py --do_predict's, several models in flight at once, bad requests answered
with 4xx in OpenAI's error shape while the server keeps serving, a vanished client freeing its
slot, the API key, and SIGTERM draining the requests in flight."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import ROOT, run_main

openai = pytest.importorskip("openai")  # a dev dependency (requirements-dev.txt)
DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")
N = 8
LENGTHS = ["--max_source_length", "128", "--max_new_tokens", "24"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model, *args, env=None):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "chatglm.serve", "--model_name_or_path", model, "--port",
                             str(port), *LENGTHS, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, **(env or {})))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"server exited {proc.returncode}: {proc.stdout.read()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/health", timeout=1)
            return proc, url
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.3)
    proc.kill()
    raise AssertionError("server did not come up")


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def post(url, body, headers=None):
    """(status, parsed JSON) of a raw POST, bad bodies included."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


@pytest.fixture(scope="module")
def server(tiny_model, tiny_checkpoint):
    run_dir = os.path.dirname(tiny_checkpoint)
    proc, url = start_server(tiny_model, "--checkpoint", f"tuned={tiny_checkpoint}", "--checkpoint",
                             f"step10={run_dir}/checkpoint-10", "--version", "v2")
    yield url
    stop(proc)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def records():
    with open(DEV, encoding="utf-8") as f:
        return [json.loads(l) for l in f][:N]


def offline(tiny_model, checkpoint, out, *extra):
    run_main(["--do_predict", "--test_file", DEV, "--model_name_or_path", tiny_model, "--ptuning_checkpoint",
              checkpoint, "--output_dir", str(out), "--max_source_length", "128", "--max_target_length", "24",
              "--max_predict_samples", str(N), "--report_to", "none", *extra])
    with open(os.path.join(out, "generated_predictions.txt"), encoding="utf-8") as f:
        return [json.loads(l)["predict"] for l in f]


def chat(client, model, text, stream=False, **extra):
    kwargs = dict(model=model, messages=[{"role": "user", "content": text}], temperature=0, **extra)
    if not stream:
        return client.chat.completions.create(**kwargs).choices[0].message.content
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs)
             if c.choices]
    return "".join(parts)


def test_models_lists_the_default_first_then_the_others_and_base(client):
    assert [m.id for m in client.models.list().data] == ["tuned", "step10", "base"]


def test_answers_equal_main_py_greedy_predictions(client, records, tiny_model, tiny_checkpoint, tmp_path):
    constrained = offline(tiny_model, tiny_checkpoint, tmp_path / "c")
    free = offline(tiny_model, tiny_checkpoint, tmp_path / "f", "--constrained_decoding", "false")
    assert constrained != free  # the grammar changed some answers: both paths are really checked
    texts = [r["input"] for r in records]
    assert [chat(client, "tuned", t) for t in texts] == constrained
    assert [chat(client, "tuned", t, stream=True) for t in texts] == constrained
    off = {"extra_body": {"constrained_decoding": False}}
    assert [chat(client, "tuned", t, **off) for t in texts] == free
    assert [chat(client, "tuned", t, stream=True, **off) for t in texts] == free
    usage = client.chat.completions.create(model="tuned", messages=[{"role": "user", "content": texts[0]}],
                                           temperature=0).usage
    assert usage.prompt_tokens > 10 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_two_checkpoints_and_the_base_in_flight_at_once(client, records):
    texts = [r["input"] for r in records]
    free = {"extra_body": {"constrained_decoding": False}}  # free text: where the three models differ most
    alone = {m: [chat(client, m, t, **free) for t in texts] for m in ("tuned", "step10", "base")}
    assert alone["tuned"] != alone["step10"] and alone["tuned"] != alone["base"]
    results, threads = {}, []
    for m in alone:
        for i, t in enumerate(texts):
            th = threading.Thread(target=lambda m=m, i=i, t=t: results.__setitem__((m, i), chat(client, m, t, **free)))
            threads.append(th)
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert {m: [results[(m, i)] for i in range(len(texts))] for m in alone} == alone


def test_allowed_answers_in_vllms_field_and_completions(client, records):
    ask = "这两句话意思相同吗？"
    out = client.chat.completions.create(model="base", messages=[{"role": "user", "content": ask}], temperature=0,
                                         extra_body={"structured_outputs": {"choice": ["相同", "不相同"]}})
    assert out.choices[0].message.content in ("相同", "不相同")
    out = client.completions.create(model="tuned", prompt=records[0]["input"], max_tokens=8, temperature=0)
    assert out.choices[0].finish_reason in ("stop", "length") and out.usage.completion_tokens <= 8
    stopped = client.completions.create(model="base", prompt="病人", max_tokens=24, temperature=0,
                                        extra_body={"constrained_decoding": False}, stop=["，", "。"])
    assert "，" not in stopped.choices[0].text and "。" not in stopped.choices[0].text


@pytest.mark.parametrize("body, status, param", [
    (b"{not json", 400, None),
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "model"),
    ({"messages": [{"role": "user", "content": "病" * 6000}]}, 400, "messages"),
    ({"messages": "hi"}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10 ** 9}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "frobnicate": 1}, 400, "frobnicate"),
    ({"messages": [{"role": "assistant", "content": "hi"}]}, 400, "messages"),
    ({"model": "base"}, 400, "messages"),
])
def test_bad_requests_get_4xx_naming_the_field_and_the_server_goes_on(server, client, body, status, param):
    code, answer = post(server + "/v1/chat/completions", body)
    assert code == status
    assert set(answer["error"]) == {"message", "type", "param", "code"} and answer["error"]["message"]
    assert answer["error"]["param"] == param
    assert chat(client, "base", "你好", max_tokens=4) is not None  # still serving


# An answer the grammar forces to be long (one allowed text of ~1,000 tokens): work that surely
# outlasts what the tests do meanwhile, whatever the model would say.
LONG = {"structured_outputs": {"choice": ["病人发热三天，咳嗽，" * 150]}}


def health(url) -> dict:
    with urllib.request.urlopen(url + "/health") as r:
        return json.loads(r.read())


def test_a_client_that_leaves_mid_stream_frees_its_slot(server, client):
    import http.client

    host, port = server.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    body = {"model": "base", "messages": [{"role": "user", "content": "病人"}], "stream": True, "max_tokens": 3000,
            "temperature": 0, **LONG}
    cancelled = health(server)["finished"].get("cancelled", 0)
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.readline().startswith(b"data: ")
    assert health(server)["in_flight"] == 1
    conn.close()  # gone mid-stream
    deadline = time.time() + 60
    while time.time() < deadline and health(server)["in_flight"]:
        time.sleep(0.1)
    after = health(server)
    assert after["in_flight"] == 0 and after["finished"].get("cancelled", 0) == cancelled + 1  # freed, not finished
    assert chat(client, "tuned", "你好", max_tokens=4) is not None


def test_api_key_and_sigterm_drain(tiny_model, tiny_checkpoint):
    proc, url = start_server(tiny_model, "--checkpoint", tiny_checkpoint, "--max_batch", "4",
                             env={"API_KEY": "s3cret"})
    try:
        ask = {"model": "base", "messages": [{"role": "user", "content": "你好"}], "max_tokens": 4}
        assert post(url + "/v1/chat/completions", ask)[0] == 401
        assert post(url + "/v1/chat/completions", ask, {"Authorization": "Bearer wrong"})[0] == 401
        assert post(url + "/v1/chat/completions", ask, {"Authorization": "Bearer s3cret"})[0] == 200
        client = openai.OpenAI(base_url=url + "/v1", api_key="s3cret", max_retries=0)
        # Enough work in flight to outlast the signal: 8 long answers on 4 slots.
        results = []
        long = dict(model="base", messages=[{"role": "user", "content": "病人"}], max_tokens=3000, temperature=0,
                    extra_body=LONG)
        threads = [threading.Thread(target=lambda: results.append(
            client.chat.completions.create(**long).choices[0].message.content)) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        code, answer = post(url + "/v1/chat/completions", ask, {"Authorization": "Bearer s3cret"})
        for t in threads:
            t.join(timeout=300)
        assert code == 503 and answer["error"]["type"] == "server_error"
        assert results == [LONG["structured_outputs"]["choice"][0]] * 8  # every request in flight finished whole
        assert proc.wait(timeout=60) == 0
    finally:
        stop(proc)
