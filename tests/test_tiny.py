"""The embedded default model: original layout, and a cache that follows its recipe."""
import json
import os

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
