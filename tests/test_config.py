"""The preset system: YAML -> typed sections, `key.sub=value` overrides, and errors that say what to fix."""

import pytest

from pipeline.config import load_config, to_dict
from pipeline.errors import UserError
from pipeline.schema import ModelSection, RunConfig


def write(tmp_path, text, name="preset.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_every_shipped_preset_loads_and_names_its_run():
    for name in ("tiny", "small", "gpt2-124m", "test"):
        cfg = load_config(f"configs/{name}.yaml")
        assert isinstance(cfg, RunConfig)
        assert cfg.run.name == name
        assert cfg.stage_dir("pretrain").as_posix() == f"runs/{name}/pretrain"


def test_a_preset_sets_only_what_differs_and_types_are_checked(tmp_path):
    cfg = load_config(write(tmp_path, "model:\n  n_layer: 2\ntrain:\n  lr: 1\n"))
    assert cfg.model.n_layer == 2
    assert cfg.model.n_embd == ModelSection().n_embd  # default kept
    assert cfg.train.lr == 1.0 and isinstance(cfg.train.lr, float)  # int -> float is the one silent conversion


def test_overrides_change_nested_keys_and_lists():
    cfg = load_config("configs/tiny.yaml", ["train.max_steps=7", "model.n_layer=1", "train.data=a.txt",
                                            "train.sample_temperatures=[0.5]", "tokenizer.from=some/dir"])
    assert cfg.train.max_steps == 7 and cfg.model.n_layer == 1
    assert cfg.train.data == ["a.txt"]  # a single value is a one-element list
    assert cfg.train.sample_temperatures == [0.5]
    assert cfg.tokenizer.from_ == "some/dir" and to_dict(cfg)["tokenizer"]["from"] == "some/dir"


def test_base_presets_inherit(tmp_path):
    write(tmp_path, "model:\n  n_layer: 3\n  n_embd: 64\n", "parent.yaml")
    cfg = load_config(write(tmp_path, "base: parent.yaml\nmodel:\n  n_layer: 5\n"))
    assert (cfg.model.n_layer, cfg.model.n_embd) == (5, 64)


def test_unknown_key_in_a_file_names_key_file_and_closest_key(tmp_path):
    path = write(tmp_path, "train:\n  max_step: 10\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert "train.max_step" in str(e.value) and str(path) in str(e.value) and "max_steps" in str(e.value)


def test_unknown_key_in_an_override_names_the_closest_key():
    with pytest.raises(UserError, match="n_layer"):
        load_config("configs/tiny.yaml", ["model.n_layers=2"])
    with pytest.raises(UserError, match="train"):
        load_config("configs/tiny.yaml", ["trian.lr=1"])


@pytest.mark.parametrize("override, words", [
    ("train.max_steps=many", "integer"),
    ("train.lr=fast", "number"),
    ("train.resume=maybe", "true or false"),
    ("run.dtype=float8", "must be one of"),
])
def test_wrong_types_fail_at_once(override, words):
    with pytest.raises(UserError, match=words):
        load_config("configs/tiny.yaml", [override])


@pytest.mark.parametrize("override, words", [
    ("model.n_head=3", "not divisible"),
    ("model.max_position_embeddings=64", "block_size"),
    ("model.n_layer=0", "must be > 0"),
])
def test_impossible_model_shapes_are_refused(override, words):
    with pytest.raises(UserError, match=words):
        load_config("configs/tiny.yaml", [override])


def test_missing_preset_and_malformed_override_say_what_to_do(tmp_path):
    with pytest.raises(UserError, match="configs/"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(UserError, match="key.sub=value"):
        load_config("configs/tiny.yaml", ["train.max_steps"])
