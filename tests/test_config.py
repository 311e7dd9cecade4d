"""The preset system: YAML -> typed sections, `key.sub=value` overrides, and errors that say what to fix."""

import pytest

from pipeline.config.loader import load_config, to_dict
from pipeline.config.schema import ModelSection, RunConfig
from pipeline.errors import UserError


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


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=0", "train.batch_size=0: must be > 0."),
    ("train.max_steps=-5", "train.max_steps=-5: must be > 0."),
    ("train.lr=.inf", "train.lr=inf: must be a finite number."),
    ("ppo.kl_coef=nan", "ppo.kl_coef=nan: must be a finite number."),
    ("ppo.top_p=1.5", "ppo.top_p=1.5: must be in (0, 1]."),
    ("sft.max_steps=0", "sft.max_steps=0: must be > 0 or -1."),
    ("reward.lora.dropout=1", "reward.lora.dropout=1.0: must be in [0, 1)."),
    ("train.sample_temperatures=[0.7,-1]", "train.sample_temperatures=[0.7, -1.0]: must be >= 0."),
    # ranges that validate() used to check by hand: declared like every other range now
    ("data.k=7", "data.k=7: must be in [2, 6]."),
    ("rank.k=1", "rank.k=1: must be in [2, 16]."),
    ("run.rounds=0", "run.rounds=0: must be >= 1."),
    ("grpo.num_generations=1", "grpo.num_generations=1: must be >= 2."),
])
def test_a_number_out_of_its_declared_range_names_key_value_and_what_is_allowed(override, message):
    with pytest.raises(UserError) as e:
        load_config("configs/tiny.yaml", [override])
    assert str(e.value) == f"command-line override {message}"


def test_legal_if_silly_values_pass_and_a_value_from_a_file_names_the_file(tmp_path):
    cfg = load_config("configs/tiny.yaml", ["train.lr=1e6", "sft.max_steps=-1", "ppo.kl_coef=0", "ppo.reward_clip=null"])
    assert (cfg.train.lr, cfg.sft.max_steps, cfg.ppo.kl_coef, cfg.ppo.reward_clip) == (1e6, -1, 0.0, None)
    path = write(tmp_path, "ppo:\n  gamma: 1.01\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value) == f"{path}: ppo.gamma=1.01: must be in [0, 1]."


def test_a_malformed_range_fails_when_the_schema_is_written_not_when_a_user_runs_it():
    from pipeline.config.fields import setting

    with pytest.raises(ValueError, match="malformed range"):
        setting(1e-3, "learning rate", range="> zero")


@pytest.mark.parametrize("content, words", [
    (b"\x00\x01binary\xff", "not a text file"),
    (b"# only a comment\n", "is empty"),
    (b"- run\n- model\n", "mapping of sections"),
    (b"train:\n  lr: [1\n", "line 3: not valid YAML"),
])
def test_a_preset_that_is_binary_empty_a_list_or_not_yaml_is_refused_in_one_line(tmp_path, content, words):
    path = tmp_path / "preset.yaml"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(path) in str(e.value) and words in str(e.value) and "\n" not in str(e.value)


def test_each_config_gets_its_own_copy_of_a_list_default():
    """A list default shared between configs would carry one stage's change into the next config read."""
    first, second = RunConfig(), RunConfig()
    first.train.data.append("more.txt")
    first.ppo.lora.target_modules.clear()
    assert second.train.data == ["demo"] and "q_proj" in second.ppo.lora.target_modules
