"""Loading original chatglm2 folders: sharded .bin with index, sharded safetensors, errors."""
import json
import os

import pytest
import torch

from chatglm.checkpoint import load_glm, read_config
from chatglm.convert import chatglm_to_glm, glm_to_chatglm
from chatglm.model import ChatGLM


def write_sharded(src_state: dict, out_dir, fmt: str, config: dict) -> None:
    """Split an original state dict over two shards with an index, as the hub folders are."""
    os.makedirs(out_dir, exist_ok=True)
    names = sorted(src_state)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        shard = {n: src_state[n].contiguous() for n in part}
        if fmt == "bin":
            fname = f"pytorch_model-0000{i}-of-00002.bin"
            torch.save(shard, os.path.join(out_dir, fname))
        else:
            from safetensors.torch import save_file

            fname = f"model-0000{i}-of-00002.safetensors"
            save_file(shard, os.path.join(out_dir, fname))
        weight_map.update({n: fname for n in part})
    index = "pytorch_model.bin.index.json" if fmt == "bin" else "model.safetensors.index.json"
    json.dump({"metadata": {}, "weight_map": weight_map}, open(os.path.join(out_dir, index), "w"))
    json.dump(config, open(os.path.join(out_dir, "config.json"), "w"))


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_sharded_folders_load_the_same_model(tiny_model, tmp_path, fmt):
    ref = load_glm(tiny_model)
    original = glm_to_chatglm({k: v.detach() for k, v in ref.state_dict().items()}, ref.config)
    write_sharded(original, tmp_path, fmt, read_config(tiny_model))
    got = load_glm(str(tmp_path))
    ids = torch.tensor([[3, 4, 5, 6, 7]])
    with torch.no_grad():
        assert torch.equal(got(ids).logits, ref(ids).logits)


def test_name_conversion_round_trips(tiny_model):
    ref = load_glm(tiny_model)
    state = {k: v.detach() for k, v in ref.state_dict().items()}
    original = glm_to_chatglm(state, ref.config)
    back = {}
    for name, t in original.items():
        back.update(chatglm_to_glm(name, t, ref.config))
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_missing_tensor_and_wrong_folder_are_named(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_glm(str(tmp_path))
    ref = load_glm(tiny_model)
    original = glm_to_chatglm({k: v.detach() for k, v in ref.state_dict().items()}, ref.config)
    del original["transformer.output_layer.weight"]
    torch.save(original, tmp_path / "pytorch_model.bin")
    json.dump(read_config(tiny_model), open(tmp_path / "config.json", "w"))
    with pytest.raises(KeyError, match="lm_head.weight"):
        load_glm(str(tmp_path))
    json.dump(dict(read_config(tiny_model), model_type="llama"), open(tmp_path / "config.json", "w"))
    with pytest.raises(ValueError, match="model_type"):
        ChatGLM.from_pretrained(str(tmp_path))
