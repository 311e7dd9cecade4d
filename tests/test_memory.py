"""The memory estimate read from headers, against real models, and the refusal it drives."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from pipeline.errors import UserError
from stages.ppo.memory import (
    ADAMW_BYTES,
    GiB,
    PPOPlan,
    check_fits,
    model_size,
    ppo_alternatives,
    ppo_memory,
    safetensors_shapes,
    total,
)


def real_count(model) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


def test_parameter_count_from_safetensors_headers_shards_and_config_alone(tiny_lm_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    size = model_size(tiny_lm_dir)
    assert size.params == real_count(model)
    assert (size.hidden, size.layers, size.vocab) == (32, 2, model.config.vocab_size)
    sharded = tmp_path / "sharded"
    model.save_pretrained(sharded, max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert model_size(sharded).params == size.params
    config_only = tmp_path / "config_only"  # no weights: an empty (meta) model from config.json
    config_only.mkdir()
    shutil.copy(tiny_lm_dir / "config.json", config_only)
    assert model_size(config_only).params == size.params


def test_another_architecture_with_tied_embeddings_counts_the_shared_matrix_once(tmp_path):
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=48, vocab_size=300, n_positions=64))
    gpt2.save_pretrained(tmp_path)
    size = model_size(tmp_path)
    assert size.params == real_count(gpt2) and (size.hidden, size.layers, size.kv_width) == (48, 2, 48)
    header = safetensors_shapes(tmp_path / "model.safetensors")
    assert "lm_head.weight" not in header and header["transformer.wte.weight"] == [300, 48]


def test_lora_adapter_count_is_what_peft_trains(tiny_lm_dir):
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "v_proj", "down_proj"]
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm_dir),
                                LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))
    trained = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    assert model_size(tiny_lm_dir).adapter_params(4, targets) == trained > 0


def parts_by_name(parts):
    return {what.split(" ")[0]: b for what, b in parts}


def test_ppo_estimate_bytes_per_parameter(tiny_lm_dir):
    s = model_size(tiny_lm_dir)
    plan = PPOPlan(frozen_dtype="float32", lora_r=4, lora_targets=("q_proj", "v_proj"))
    full = parts_by_name(ppo_memory(s, s, s, plan))
    # trained: fp32 weights, gradients and AdamW's two moments; frozen: weights in their dtype
    assert full["policy"] == full["value"] == s.params * ADAMW_BYTES
    assert full["reference"] == full["reward"] == s.params * 4
    half = parts_by_name(ppo_memory(s, s, s, PPOPlan(frozen_dtype="bfloat16")))
    assert half["reference"] == half["reward"] == s.params * 2 and half["policy"] == full["policy"]
    lora = parts_by_name(ppo_memory(s, s, s, PPOPlan(frozen_dtype="bfloat16", lora=True, lora_r=4,
                                                     lora_targets=("q_proj", "v_proj"))))
    adapters = s.adapter_params(4, ["q_proj", "v_proj"])
    assert lora["policy"] == s.params * 2 + adapters * ADAMW_BYTES
    assert lora["reference"] == 0 and lora["value"] == (s.hidden + 1) * ADAMW_BYTES  # the shared base
    separate = parts_by_name(ppo_memory(s, s, s, PPOPlan(frozen_dtype="bfloat16", lora=True, lora_value="model")))
    assert separate["value"] == s.params * ADAMW_BYTES
    checkpointed = ppo_memory(s, s, s, PPOPlan(frozen_dtype="float32", gradient_checkpointing=True,
                                               generation_batch=1))
    assert parts_by_name(checkpointed)["activations"] < parts_by_name(
        ppo_memory(s, s, s, PPOPlan(frozen_dtype="float32", generation_batch=1)))["activations"]


def test_refusal_names_exactly_the_options_that_would_fit(tiny_lm_dir):
    s = model_size(tiny_lm_dir)
    plan = PPOPlan(frozen_dtype="float32", lora_r=4, lora_targets=("q_proj", "v_proj"), micro_batch=1,
                   generation_batch=1, prompt_len=16, answer_len=8)
    parts = ppo_memory(s, s, s, plan)
    alternatives = ppo_alternatives(s, s, s, plan, cuda=True)
    by_option = {k: total(v) for k, v in alternatives.items()}
    check_fits("ppo", parts, total(parts), alternatives, "cuda:0")  # exactly enough: no refusal
    check_fits("ppo", parts, None, alternatives, "mps")  # nothing known about the device: no refusal
    budget = (by_option["ppo.lora.enabled=true"] + by_option["run.dtype=bfloat16"]) / 2  # LoRA fits, bf16 not
    assert by_option["run.dtype=bfloat16"] > budget >= by_option["ppo.lora.enabled=true"]
    with pytest.raises(UserError) as e:
        check_fits("ppo", parts, budget, alternatives, "cuda:0")
    line = str(e.value)
    assert "\n" not in line and "cuda:0" in line and f"{total(parts) / GiB:.2f} GiB" in line
    fitting = [k for k, b in by_option.items() if b <= budget]
    assert fitting and all(k in line for k in fitting)
    assert "run.dtype=bfloat16 (" not in line and "ppo.check_memory=false" in line
    with pytest.raises(UserError, match="none of .* fits alone"):
        check_fits("ppo", parts, 1.0, alternatives, "cuda:0")
    assert not any("qlora" in k for k in ppo_alternatives(s, s, s, plan, cuda=False))  # 4-bit needs CUDA
    json.dumps(by_option)  # plain numbers


def test_trl_stages_pass_gradient_checkpointing_to_their_trainer_off_by_default(tmp_path):
    from trl import RewardConfig, SFTConfig

    from pipeline.config.schema import RewardSection, RunSection, SFTSection
    from pipeline.lm.hf_glue import trainer_kwargs

    run = RunSection(device="cpu")
    for section, config in ((SFTSection(), SFTConfig), (RewardSection(), RewardConfig)):
        assert not config(**trainer_kwargs(section, output_dir=tmp_path, run=run)).activation_checkpointing
        on = type(section)(gradient_checkpointing=True)
        assert config(**trainer_kwargs(on, output_dir=tmp_path, run=run)).activation_checkpointing
