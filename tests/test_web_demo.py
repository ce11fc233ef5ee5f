"""web_demo.py in a real headless browser (Debian's Chromium, driven by selenium), and the
streaming and scoring it is built on."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from conftest import ROOT

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
# CI installs Chromium (.ci/run) and sets this, so there the test cannot quietly skip.
BROWSER_REQUIRED = os.environ.get("WEB_DEMO_BROWSER_REQUIRED", "") not in ("", "0")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def demo_server(tiny_model, tiny_checkpoint):
    port = _free_port()
    env = dict(os.environ, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen([sys.executable, "web_demo.py", "--model_name_or_path", tiny_model,
                             "--ptuning_checkpoint", tiny_checkpoint, "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 180
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"web_demo.py exited {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if time.time() > deadline:
                    raise AssertionError("web_demo.py did not serve within 180 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        if BROWSER_REQUIRED:
            raise AssertionError("WEB_DEMO_BROWSER_REQUIRED is set but chromium/chromedriver are not installed")
        pytest.skip("Debian's chromium and chromium-driver are not installed (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1800"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _expected_answers(model_dir, checkpoint, record):
    """Greedy base and tuned answers from the library, as main.py's prediction gives them
    (constrained to the example's options, the page's default)."""
    from cblue.answer_grammar import grammar_for_prompt
    from cblue.features import prompt_ids
    from chatglm.generation import GenerationSettings, constraint_for, generate
    from chatglm.model import ChatGLM, base_only
    from chatglm.tokenizer import ChatGLMTokenizer

    model = ChatGLM.from_pretrained(model_dir, ptuning_checkpoint=checkpoint)
    tok = ChatGLMTokenizer.from_pretrained(model_dir)
    ids = prompt_ids(tok, record["input"], None, 700, "left")[0]
    settings = GenerationSettings(max_new_tokens=128)
    grammar = grammar_for_prompt(record["input"], record, can_spell=tok.can_spell)
    run = lambda: tok.decode(generate(model, [ids], settings, tok.eos_token_id, tok.pad_token_id,
                                      constraint_for(model, tok, [grammar]))[0]).strip()
    with base_only(model):
        base = run()
    return base, run()


def test_page_loads_an_example_runs_and_both_answers_appear(demo_server, browser, tiny_model, tiny_checkpoint):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 120)
    browser.get(demo_server)
    first = wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "#examples tbody tr")))
    example_task = first.text.split()[0]
    first.click()
    prompt = browser.find_element(By.CSS_SELECTOR, "#prompt textarea")
    wait.until(lambda d: prompt.get_attribute("value").strip())
    dev = [json.loads(l) for l in open(os.path.join(ROOT, "PromptCBLUE", "dev.json"), encoding="utf-8")]
    record = next(r for r in dev if r["input"] == prompt.get_attribute("value"))
    assert record["task_dataset"] == example_task

    browser.find_element(By.CSS_SELECTOR, "#run").click()
    wait.until(lambda d: "official" in d.find_element(By.CSS_SELECTOR, "#scores").text)
    base = browser.find_element(By.CSS_SELECTOR, "#base_answer textarea").get_attribute("value")
    tuned = browser.find_element(By.CSS_SELECTOR, "#tuned_answer textarea").get_attribute("value")
    assert base.strip() and tuned.strip()
    assert (base, tuned) == _expected_answers(tiny_model, tiny_checkpoint, record)
    scores = browser.find_element(By.CSS_SELECTOR, "#scores").text
    assert record["target"].splitlines()[0] in scores
    assert "base" in scores and "tuned" in scores
