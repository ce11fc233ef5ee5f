"""ChatGLM3 and GLM-4 folders: the family is recognised from the files; prompts, answers and
special ids are what their hub tokenizers give (restated here from the hub code's facts with the
raw sentencepiece / tokenizers libraries, not through our ChatFormat); RoPE scaling, their
P-tuning checkpoints (a whole model with pre_seq_len, PEFT's prefix tuning), export, and
main.py end to end."""
import json
import os
import re
import shutil

import pytest
import torch

from conftest import GOLDEN, ROOT, needs_golden, run_main
from cblue.features import train_features
from chatglm.family import detect_family
from chatglm.tokenizer import load_tokenizer

TRAIN = os.path.join(ROOT, "PromptCBLUE", "train.json")
DEV = os.path.join(ROOT, "PromptCBLUE", "dev.json")


def _records(n=None):
    with open(DEV, encoding="utf-8") as f:
        return [json.loads(line) for line in f][:n]


def _bare_copy(src, dst, files=("tokenizer.model", "config.json")):
    os.makedirs(dst)
    for name in files:
        shutil.copyfile(os.path.join(src, name), os.path.join(dst, name))
    return dst


def test_the_family_is_recognised_from_the_files(chatglm3, glm4, tiny_model, tmp_path):
    assert detect_family(glm4)[0].name == "glm4"
    assert detect_family(chatglm3)[0].name == "chatglm3"
    assert detect_family(tiny_model)[0].name == "chatglm2"
    # ChatGLM3 by each of its signs alone, on ChatGLM2's files
    signs = {"tokenization_chatglm.py": 'special_tokens = ["[MASK]", "<|system|>", "<|user|>"]\n',
             "generation_config.json": json.dumps({"eos_token_id": [2, 64795, 64797]}),
             "tokenizer_config.json": json.dumps({"encode_special_tokens": False})}
    # (clean_up_tokenization_spaces false alone says it too)
    folder = _bare_copy(tiny_model, tmp_path / "cleanup")
    (folder / "tokenizer_config.json").write_text(json.dumps({"clean_up_tokenization_spaces": False}))
    assert detect_family(str(folder))[0].name == "chatglm3"
    for name, text in signs.items():
        folder = _bare_copy(tiny_model, tmp_path / name)
        (folder / name).write_text(text)
        family, why = detect_family(str(folder))
        assert family.name == "chatglm3" and name.split(".")[0] in why.replace(".json", "").replace(".py", "")
    with pytest.raises(FileNotFoundError, match="chatglm3-6b or glm-4-9b"):
        detect_family(str(tmp_path))
    # A folder that does not tell: --model_family says it; a wrong one is a clear error.
    forced = load_tokenizer(tiny_model, family="chatglm3")
    assert forced.family.name == "chatglm3" and forced.detected_by == "--model_family"
    assert forced.encode_prompt("x")[-1] == forced.special_ids["<|assistant|>"]
    with pytest.raises(ValueError, match="tiktoken file"):
        load_tokenizer(glm4, family="chatglm3")
    garbage = _bare_copy(tiny_model, tmp_path / "garbage")
    (garbage / "tokenizer.model").write_bytes(b"\x00\x01 not a model")
    with pytest.raises(ValueError, match="garbage/tokenizer.model: not a sentencepiece model"):
        load_tokenizer(str(garbage))


@needs_golden
def test_the_golden_chatglm2_folder_stays_chatglm2():
    assert detect_family(os.path.join(GOLDEN, "model"))[0].name == "chatglm2"


def test_chatglm3_prompts_and_training_rows_are_build_chat_input(chatglm3):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=os.path.join(chatglm3, "tokenizer.model"))
    n = sp.vocab_size()  # the hub's specials follow: [MASK] [gMASK] [sMASK] sop eop <|system|> <|user|> ...
    gmask, sop, user, assistant, observation = n + 1, n + 3, n + 6, n + 7, n + 8
    tok = load_tokenizer(chatglm3)
    assert tok.stop_ids == (2, user, observation) and tok.pad_token_id == 0 and len(tok) == n + 9
    rec = _records(1)[0]
    turn = lambda role, text: [role] + sp.encode("\n") + sp.encode(text)
    assert tok.encode_prompt(rec["input"]) == [gmask, sop] + turn(user, rec["input"]) + [assistant]
    history = [("你好", "您好！有什么可以帮您？")]
    assert tok.encode_prompt("头痛怎么办", history) == ([gmask, sop] + turn(user, "你好") + turn(assistant, history[0][1])
                                                      + turn(user, "头痛怎么办") + [assistant])
    # A written `</s>` is text for ChatGLM3 (its messages skip the slow tokenizer's special split).
    assert tok.encode_text("a</s>b") == sp.encode("a</s>b")
    rows = train_features({"input": [rec["input"]], "target": [rec["target"]]}, tok, "input", "target", None,
                          512, 512, "left")
    prompt = [gmask, sop] + turn(user, rec["input"]) + [assistant]
    answer = sp.encode("\n") + sp.encode(rec["target"]) + [2]  # finetune_hf: the metadata line, the text, eos
    assert rows["input_ids"][0] == prompt + answer
    assert rows["labels"][0] == [-100] * len(prompt) + answer
    # Truncated from either side, the prompt keeps [gMASK] sop and ends with <|assistant|>.
    for side in ("left", "right"):
        cut = train_features({"input": [rec["input"]], "target": [rec["target"]]}, tok, "input", "target", None,
                             16, 8, side)["input_ids"][0]
        assert cut[:2] == [gmask, sop] and cut[15] == assistant and cut[16:] == answer[:-1][:8] + [2]


def test_glm4_tokenizer_is_the_tiktoken_file_as_transformers_converts_it(glm4):
    from transformers.convert_slow_tokenizer import TikTokenConverter

    tok = load_tokenizer(glm4)
    reference = TikTokenConverter(vocab_file=os.path.join(glm4, "tokenizer.model")).converted()
    texts = [r[k] for r in _records() for k in ("input", "target")] + ["  a\n\n b's 123456 ", "<|user|> [gMASK]"]
    for text in texts:
        ids = tok.encode_text(text)
        assert ids == reference.encode(text, add_special_tokens=False).ids, text
        assert tok.decode(ids) == text
    added = json.load(open(os.path.join(glm4, "tokenizer_config.json")))["added_tokens_decoder"]
    ids = {v["content"]: int(k) for k, v in added.items()}
    n = tok.n_words
    assert ids["<|endoftext|>"] == n and ids["[gMASK]"] == n + 2 and ids["<sop>"] == n + 4 and ids["<|user|>"] == n + 7
    assert tok.stop_ids == (n, n + 7, n + 9) and tok.pad_token_id == n and tok.eos_token_id == n
    rec = _records(1)[0]
    enc = reference.encode
    expected = [ids["[gMASK]"], ids["<sop>"], ids["<|user|>"]] + enc("\n").ids + enc(rec["input"]).ids + \
        [ids["<|assistant|>"]]
    assert tok.encode_prompt(rec["input"]) == expected
    assert tok.encode_answer(rec["target"]) == enc("\n").ids + enc(rec["target"]).ids


def test_rope_ratio_scales_the_rotary_base(chatglm3, tmp_path):
    from chatglm.checkpoint import load_glm

    model = load_glm(chatglm3)
    dim = model.config.head_dim // 2  # rotary on half of each head, as the hub's RotaryEmbedding(kv_channels // 2)
    expected = 1.0 / ((10000 * 50) ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    assert torch.allclose(model.model.rotary_emb.inv_freq, expected)
    plain = _bare_copy(chatglm3, tmp_path / "plain", ("tokenizer.model", "tokenizer_config.json", "pytorch_model.bin"))
    cfg = json.load(open(os.path.join(chatglm3, "config.json")))
    del cfg["rope_ratio"]
    json.dump(cfg, open(plain / "config.json", "w"))
    ids = torch.tensor([load_tokenizer(chatglm3).encode_prompt(_records(1)[0]["input"])])
    with torch.no_grad():
        assert not torch.allclose(model(input_ids=ids).logits, load_glm(str(plain))(input_ids=ids).logits, atol=1e-3)


def test_peft_prefix_tuning_loads_as_the_same_keys_and_values(glm4, tmp_path):
    """GLM-4's finetune scripts P-tune with PEFT's PREFIX_TUNING (num_attention_heads = the kv
    groups, token_dim = groups x kv_channels): its saved prompt_embeddings are the hub prefix
    encoder's rows, and PEFT's own get_prompt gives the keys/values ours does."""
    from peft import PrefixTuningConfig, get_peft_model

    from chatglm.checkpoint import load_glm
    from chatglm.model import ChatGLM

    base = load_glm(glm4)
    c = base.config
    peft_config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, num_layers=c.num_hidden_layers,
                                     token_dim=c.num_key_value_heads * c.head_dim,
                                     num_attention_heads=c.num_key_value_heads)
    peft_model = get_peft_model(base, peft_config)
    torch.manual_seed(3)
    torch.nn.init.normal_(peft_model.prompt_encoder["default"].embedding.weight)
    peft_model.save_pretrained(tmp_path / "peft-prefix")
    ours = ChatGLM.from_pretrained(glm4, ptuning_checkpoint=str(tmp_path / "peft-prefix")).eval()
    assert ours.pre_seq_len == 6
    theirs = peft_model.eval().get_prompt(batch_size=1)
    for layer, (k, v) in enumerate(ours.prefix_encoder.key_values(1, torch.float32)):
        ref = theirs.layers[layer] if hasattr(theirs, "layers") else None
        ref_k, ref_v = (ref.keys, ref.values) if ref is not None else theirs[layer]
        assert torch.equal(k, ref_k) and torch.equal(v, ref_v)


def test_a_whole_model_folder_with_a_prefix_loads_its_prefix(chatglm3, tmp_path):
    """ChatGLM3's finetune_hf saves the hub model (pre_seq_len set) whole, in safetensors shards."""
    from safetensors.torch import save_file

    from chatglm.checkpoint import iter_checkpoint_tensors
    from chatglm.model import ChatGLM

    folder = tmp_path / "checkpoint-10"
    folder.mkdir()
    tensors = dict(iter_checkpoint_tensors(chatglm3))
    emb = torch.randn(4, 2 * 4 * 2 * 32)  # 4 tokens x (layers 4 x k,v x groups 2 x kv_channels 32)
    names = sorted(tensors)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": {k: tensors[k] for k in names[:half]},
              "model-00002-of-00002.safetensors": {**{k: tensors[k] for k in names[half:]},
                                                   "transformer.prefix_encoder.embedding.weight": emb}}
    weight_map = {}
    for shard, part in shards.items():
        save_file({k: v.contiguous() for k, v in part.items()}, str(folder / shard))
        weight_map.update({k: shard for k in part})
    json.dump({"weight_map": weight_map}, open(folder / "model.safetensors.index.json", "w"))
    cfg = json.load(open(os.path.join(chatglm3, "config.json")))
    json.dump({**cfg, "pre_seq_len": 4}, open(folder / "config.json", "w"))
    model = ChatGLM.from_pretrained(chatglm3, ptuning_checkpoint=str(folder))
    assert model.pre_seq_len == 4 and torch.equal(model.prefix_encoder.embedding.weight, emb)


@pytest.mark.parametrize("family", ["chatglm3", "glm4"])
def test_export_gives_the_family_chat_template_ids_and_greedy_outputs(family, chatglm3, glm4, tmp_path):
    from test_export import _assert_same, _prompts, export, fresh_process, ours

    model_dir = {"chatglm3": chatglm3, "glm4": glm4}[family]
    export("--model_name_or_path", model_dir, "--output_dir", tmp_path / "hf")
    assert json.load(open(tmp_path / "hf" / "config.json"))["model_type"] == "glm"
    prompts = _prompts(3)
    _assert_same(fresh_process(tmp_path / "hf", prompts), ours(model_dir, None, prompts))


@pytest.mark.parametrize("family,method", [("chatglm3", ["--lora_rank", "4"]),
                                           ("glm4", ["--pre_seq_len", "4", "--quantization_bit", "4"])])
def test_main_trains_and_predicts_on_the_family(family, method, chatglm3, glm4, tmp_path):
    """LoRA on ChatGLM3, int4 P-tuning on GLM-4; prediction constrained (the default) and scored."""
    model_dir = {"chatglm3": chatglm3, "glm4": glm4}[family]
    proc = run_main(["--do_train", "--do_predict", "--train_file", TRAIN, "--test_file", DEV, "--model_name_or_path",
                     model_dir, "--output_dir", str(tmp_path), "--max_source_length", "96", "--max_target_length", "32",
                     "--per_device_train_batch_size", "4", *method, "--max_steps", "3", "--save_steps",
                     "3", "--max_predict_samples", "6", "--predict_with_generate", "--report_to", "none"])
    assert re.search(rf"{family} tokenizer \(.+\), roles prompts", proc.stderr + proc.stdout)
    weights = "adapter_model.safetensors" if "--lora_rank" in method else "pytorch_model.bin"
    assert os.path.isfile(tmp_path / "checkpoint-3" / weights)
    predictions = (tmp_path / "generated_predictions.txt").read_text(encoding="utf-8").splitlines()
    assert len(predictions) == 6
    scores = json.load(open(tmp_path / "scores.json"))
    assert scores and json.load(open(tmp_path / "predict_results.json"))["predict_decoding"] == "constrained"


def test_a_full_fine_tune_checkpoint_stays_in_its_family(chatglm3, glm4, tmp_path):
    """What full fine-tuning saves is a folder of the same family (tokenizer files, eos set, hub name)."""
    from chatglm.model import ChatGLM

    for name, model_dir in (("chatglm3", chatglm3), ("glm4", glm4)):
        model = ChatGLM.from_pretrained(model_dir).eval()
        out = str(tmp_path / name)
        model.save_checkpoint(out)
        assert detect_family(out)[0].name == name
        assert json.load(open(os.path.join(out, "config.json")))["_name_or_path"] == \
            json.load(open(os.path.join(model_dir, "config.json")))["_name_or_path"]
        ids = torch.tensor([load_tokenizer(out).encode_prompt("头痛")])
        with torch.no_grad():
            assert torch.equal(model(input_ids=ids).logits, ChatGLM.from_pretrained(out).eval()(input_ids=ids).logits)
