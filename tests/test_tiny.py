"""The embedded default model: original layout, and a cache that follows its recipe."""
import json
import os
import sys

from conftest import ROOT, SHARED_DATA, needs_shared_data
from chatglm.checkpoint import read_config
from chatglm.tiny import build_recipe, is_built

TRAIN = os.path.join(ROOT, "PromptCBLUE", "train.json")
CHAT = os.path.join(ROOT, "PromptCBLUE", "chat.json")


def test_built_in_the_original_layout(tiny_model):
    assert sorted(f for f in os.listdir(tiny_model) if not f.startswith(".")) == [
        "config.json", "pytorch_model.bin", "tokenizer.model", "tokenizer_config.json"]
    cfg = read_config(tiny_model)
    assert cfg["model_type"] == "chatglm" and cfg["padded_vocab_size"] % 64 == 0


def test_a_changed_recipe_is_rebuilt(tiny_model, tmp_path):
    assert is_built(tiny_model, build_recipe(TRAIN, 0, 0))
    assert not is_built(tiny_model, build_recipe(TRAIN, 0, 600))  # other pre-training: rebuild
    other = tmp_path / "train.json"
    other.write_text(open(TRAIN, encoding="utf-8").read() + json.dumps({"input": "x", "target": "y"}) + "\n")
    assert not is_built(tiny_model, build_recipe(str(other), 0, 0))  # other data: rebuild


def test_the_build_shows_its_progress(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "chatglm.tiny", "--train_file", TRAIN, "--out", str(tmp_path / "m"),
                           "--pretrain_steps", "6", "--chat_file", CHAT, "--chat_steps", "3"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, GLM2_PROGRESS_SECONDS="0"))
    assert proc.returncode == 0, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.startswith("building the tiny model: pre-training: ")]
    assert len(lines) == 6
    assert "1/6 steps (16%)" in lines[0] and "steps/s" in lines[0] and " left, loss " in lines[0]
    assert "6/6 steps (100%)" in lines[-1] and ", took " in lines[-1]
    # then the supervised chat stage; the recipe (and so the cache) includes it
    chat = [l for l in proc.stderr.splitlines() if l.startswith("building the tiny model: chat stage: ")]
    assert len(chat) == 3 and "3/3 steps (100%)" in chat[-1]
    assert is_built(str(tmp_path / "m"), build_recipe(TRAIN, 0, 6, CHAT, 3))
    assert not is_built(str(tmp_path / "m"), build_recipe(TRAIN, 0, 6))
    assert proc.stdout.strip() == str(tmp_path / "m")  # stdout stays the model path (train.sh reads it)


@needs_shared_data
def test_tokenizer_grows_for_files_with_many_characters(tmp_path):
    """The real training set has more distinct characters than the demo's 2000 pieces: the
    vocabulary grows instead of sentencepiece failing; the sample data's stays 2000."""
    import sentencepiece as spm

    from chatglm.tiny import train_tokenizer

    real = os.path.join(SHARED_DATA, "train.json")
    train_tokenizer(real, str(tmp_path / "real.model"))
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "real.model"))
    chars = {c for line in open(real, encoding="utf-8") for c in json.loads(line)["input"]}
    assert sp.get_piece_size() > len(chars) > 2000
    # Every character is its own piece (whitespace is sentencepiece's "▁", not a piece of its own).
    assert [c for c in sorted(chars) if not c.isspace() and sp.piece_to_id(c) == sp.unk_id()] == []
    train_tokenizer(os.path.join(ROOT, "PromptCBLUE", "train.json"), str(tmp_path / "sample.model"))
    assert spm.SentencePieceProcessor(model_file=str(tmp_path / "sample.model")).get_piece_size() == 2000


def test_paired_documents_keep_each_answer_after_its_prompt():
    """--documents paired: each record is one pre-training text, its prompt then its answer (a chat
    pair without its chat frame); split (the default) keeps prompts and answers apart."""
    from chatglm.tiny import pretraining_texts

    records = [{"input": "问一", "target": "答一"},
               {"input": "问二", "target": "您好！答二。祝您健康！", "plain_target": "答二。"}]
    assert sorted(pretraining_texts(records, "paired", 0)) == ["问一答一", "问二答二。"]
    assert sorted(pretraining_texts(records, "split", 0)) == sorted(["问一", "答一", "问二", "您好！答二。祝您健康！"])
    assert build_recipe(TRAIN, 0, 6, documents="paired") != build_recipe(TRAIN, 0, 6)
    assert build_recipe(TRAIN, 0, 6, shape={"num_key_value_heads": 8}) != build_recipe(TRAIN, 0, 6)


def test_a_bad_shape_field_is_a_user_error():
    import pytest

    from chatglm.tiny import parse_shape

    assert parse_shape("num_key_value_heads=8,num_hidden_layers=6") == {"num_key_value_heads": 8, "num_hidden_layers": 6}
    for bad in ("bogus=1", "num_hidden_layers=x", "num_hidden_layers"):
        with pytest.raises(ValueError, match="FIELD=N"):
            parse_shape(bad)


def test_the_terse_cue_teaches_each_chat_pair_twice():
    """--terse_cue: the chat stage also teaches every pair with the cue before its question and
    its plain answer after it (the brevity instruction a prefix can stand in for); the cue is part
    of the recipe, so a base built without it is rebuilt."""
    from chatglm.tiny import chat_columns

    pairs = [{"input": "问一", "target": "您好！答一。祝您健康！", "plain_target": "答一。"}]
    assert chat_columns(pairs) == {"input": ["问一"], "target": ["您好！答一。祝您健康！"]}
    assert chat_columns(pairs, "请简要回答：") == {"input": ["问一", "请简要回答：问一"],
                                               "target": ["您好！答一。祝您健康！", "答一。"]}
    assert (build_recipe(TRAIN, 0, 6, CHAT, 3, terse_cue="请简要回答：")
            != build_recipe(TRAIN, 0, 6, CHAT, 3))


def test_the_pretraining_rate_is_part_of_the_recipe_only_when_changed():
    from chatglm.tiny import PRETRAIN_LR

    # The default rate leaves the recipe as before (cached builds stay valid); another rebuilds.
    assert "pretrain_lr" not in build_recipe(TRAIN, 0, 6, pretrain_lr=PRETRAIN_LR)
    assert build_recipe(TRAIN, 0, 6, pretrain_lr=6e-3) != build_recipe(TRAIN, 0, 6)


def test_a_snapshot_is_unpacked_instead_of_trained(tmp_path, monkeypatch):
    import torch

    import chatglm.tiny as tiny
    from chatglm.checkpoint import load_glm

    built = tiny.build_tiny_model(TRAIN, str(tmp_path / "built"), pretrain_steps=2, snapshot_dir=None,
                                  write_snapshot_to=str(tmp_path / "snap"))
    assert sorted(os.listdir(tmp_path / "snap")) == ["model.safetensors", "recipe.json", "tokenizer.model"]

    def no_training(*a, **k):
        raise AssertionError("a snapshot of this recipe must not be trained again")

    monkeypatch.setattr(tiny, "train_tokenizer", no_training)
    monkeypatch.setattr(tiny, "pretrain", no_training)
    unpacked = tiny.build_tiny_model(TRAIN, str(tmp_path / "unpacked"), pretrain_steps=2,
                                     snapshot_dir=str(tmp_path / "snap"))
    assert is_built(unpacked, build_recipe(TRAIN, 0, 2))
    a, b = load_glm(built).state_dict(), load_glm(unpacked).state_dict()
    assert a.keys() == b.keys()
    for k in a:  # the same weights, to fp16's precision
        assert torch.equal(a[k].half().float(), b[k]), k
    assert open(os.path.join(built, "tokenizer.model"), "rb").read() == \
        open(os.path.join(unpacked, "tokenizer.model"), "rb").read()
    # another recipe does not take the snapshot: it is built (here: it would train, and fails)
    try:
        tiny.build_tiny_model(TRAIN, str(tmp_path / "other"), pretrain_steps=3, snapshot_dir=str(tmp_path / "snap"))
    except AssertionError as e:
        assert "must not be trained" in str(e)
    else:
        raise AssertionError("a snapshot of another recipe was used")


def test_train_sh_builds_the_shipped_base_by_unpacking_it(tmp_path):
    """train.sh's own build command (read from the script) finds chatglm/demo_base's recipe
    unchanged, so a fresh clone unpacks it in seconds: a change to the recipe or the sample data
    without a new snapshot fails here (rebuild it: python -m chatglm.tiny <train.sh's flags>
    --from_scratch --write_snapshot chatglm/demo_base)."""
    import re
    import subprocess

    script = open(os.path.join(ROOT, "train.sh"), encoding="utf-8").read()
    command = re.search(r"MODEL=\$\((python -m chatglm\.tiny .*?)\| tail -n 1\)", script, re.S).group(1)
    command = command.replace("--out output/tiny-chatglm2", f"--out {tmp_path / 'base'}")
    assert str(tmp_path) in command
    env = {k: v for k, v in os.environ.items() if k not in ("PRETRAIN_STEPS", "CHAT_STEPS", "CHAT_FILE")}
    proc = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(env, DATA="PromptCBLUE", PATH=os.path.dirname(sys.executable) + ":" + env["PATH"]))
    assert proc.returncode == 0, proc.stderr
    assert "Unpacked the shipped base" in proc.stderr, proc.stderr[-2000:]
    assert "pre-training:" not in proc.stderr
    with open(os.path.join(ROOT, "chatglm", "demo_base", "recipe.json"), encoding="utf-8") as f:
        assert is_built(str(tmp_path / "base"), json.load(f))


def test_an_unreadable_snapshot_is_built_instead(tmp_path, caplog):
    import shutil

    import chatglm.tiny as tiny

    snap = tmp_path / "snap"
    shutil.copytree(os.path.join(ROOT, "chatglm", "demo_base"), snap)
    (snap / "recipe.json").write_text(json.dumps(build_recipe(TRAIN, 0, 2)), encoding="utf-8")
    (snap / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")  # a placeholder
    with caplog.at_level("WARNING"):
        out = tiny.build_tiny_model(TRAIN, str(tmp_path / "m"), pretrain_steps=2, snapshot_dir=str(snap))
    assert "unreadable" in caplog.text and is_built(out, build_recipe(TRAIN, 0, 2))
