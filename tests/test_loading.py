"""Loading a model folder a user names: broken files are named one by one, and a reward model
must bring its trained score head. (The whole-CLI view is in tests/test_bad_inputs.py.)"""

import json
import shutil

import pytest
import torch

from pipeline.errors import UserError
from pipeline.lm.loading import check_model_dir, load_sequence_scorer, one_line


@pytest.fixture(scope="module")
def reward_dir(tiny_lm_dir, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("rm")
    AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1).save_pretrained(out)
    return out


def test_a_trained_score_head_is_loaded_as_saved_and_a_causal_lm_is_refused(reward_dir, tiny_lm_dir):
    from safetensors.torch import load_file

    model = load_sequence_scorer(reward_dir, "reward model", trained_head=True)
    saved = load_file(reward_dir / "model.safetensors")["score.weight"]
    assert torch.equal(model.score.weight, saved)
    with pytest.raises(UserError, match="no score head"):
        load_sequence_scorer(tiny_lm_dir, "reward model", trained_head=True)
    fresh = load_sequence_scorer(tiny_lm_dir, "value model", trained_head=False)  # a value head may start fresh
    assert fresh.score.weight.shape[0] == 1


def test_a_sharded_checkpoint_missing_a_shard_or_with_a_cut_shard_is_named(reward_dir, tmp_path):
    d = shutil.copytree(reward_dir, tmp_path / "sharded")
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    index = {"metadata": {}, "weight_map": {"score.weight": "model-00001-of-00002.safetensors",
                                            "model.norm.weight": "model-00002-of-00002.safetensors"}}
    (d / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match="lacks the weight shard model-00002-of-00002.safetensors"):
        check_model_dir(d)
    shard = d / "model-00001-of-00002.safetensors"
    shutil.copy(shard, d / "model-00002-of-00002.safetensors")
    check_model_dir(d)  # both shards present and whole
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(UserError, match="model-00001-of-00002.safetensors is truncated or corrupt"):
        check_model_dir(d)


def test_a_library_message_becomes_one_line_without_advice_to_load_unsafely():
    e = RuntimeError("Weights only load failed.\nIn PyTorch 2.6 the default changed. Re-running `torch.load` "
                     "with `weights_only` set to `False` will likely succeed. Unpickling error: bad opcode")
    line = one_line(e)
    assert "\n" not in line and "weights_only" not in line and "bad opcode" in line


def test_a_reward_model_or_weights_that_do_not_fit_their_config_are_not_loaded_as_a_causal_lm(
        reward_dir, tiny_lm_dir, tmp_path):
    from pipeline.lm.model import load_causal_lm

    load_causal_lm(str(tiny_lm_dir))  # the real thing loads
    with pytest.raises(UserError, match="not a language model"):
        load_causal_lm(str(reward_dir))
    deeper = tmp_path / "deeper"
    shutil.copytree(tiny_lm_dir, deeper)
    config = json.loads((deeper / "config.json").read_text())
    config["num_hidden_layers"] += 1  # config.json says one more block than the weights hold
    (deeper / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="weights do not fit its config.json"):
        load_causal_lm(str(deeper))
