"""PPO within one GPU's memory: the value head on a LoRA policy's base (learns, resumes exactly),
frozen models in half precision, gradient checkpointing, the merged artifact of a half-precision base."""

import dataclasses

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.lm.forward import checkpoint_layers
from stages.ppo.models import load_models, merged_policy
from stages.ppo.trainer import PPOTrainer
from stages.ppo.value import ValueHead
from tests.test_ppo_trainer import PROMPTS, make_cfg, target_share, uneven_batch


def lora_trainer(lm_dir, cfg, *, on_adapters=True, seed=0, **kw):
    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(lm_dir)
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(lm_dir),
                            LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"],
                                       lora_dropout=0.0, task_type="CAUSAL_LM"))
    value = ValueHead(policy.get_base_model().config.hidden_size, on_adapters=on_adapters)
    return PPOTrainer(cfg, policy, None, None, value, tok, PROMPTS, reward_fn=target_share, seed=seed,
                      show_progress=False, **kw)


def adapter_grads(model) -> list[torch.Tensor]:
    return [p.grad for n, p in model.policy.named_parameters() if "lora_" in n]


@pytest.mark.parametrize("on_adapters", [True, False])
def test_value_head_reads_the_policy_states_and_trains_the_adapters_only_when_on_them(tiny_lm_dir, on_adapters):
    tr = lora_trainer(tiny_lm_dir, make_cfg(lr=2e-2), on_adapters=on_adapters)
    tr.step()  # adapters and head move away from their zero start
    b = uneven_batch(tr)
    model = tr.model
    model.zero_grad(set_to_none=True)
    _, values = model(b.input_ids, b.attention_mask, b.response_ids, b.prompt_len, 1.0)
    (values * b.response_mask).sum().backward()
    assert model.value.score.weight.grad.abs().sum() > 0
    grads = adapter_grads(model)
    if on_adapters:  # a shared trunk: the value loss reaches the adapters
        assert any(g is not None and g.abs().sum() > 0 for g in grads)
    else:  # the SFT model's states (adapters off): only the head learns from the value loss
        assert all(g is None for g in grads)
        sft = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
        with torch.no_grad():
            h = sft.model(input_ids=b.input_ids, attention_mask=b.attention_mask,
                          position_ids=(b.attention_mask.cumsum(1) - 1).clamp(min=0)).last_hidden_state
            expected = model.value(h[:, b.prompt_len - 1:-1])
        torch.testing.assert_close(values * b.response_mask, expected * b.response_mask, atol=1e-5, rtol=1e-4)


def test_lora_policy_with_a_value_head_resumes_to_the_uninterrupted_run(tiny_lm_dir, tmp_path):
    cfg = make_cfg(total_episodes=16 * 4, lr=2e-2, kl_coef=0.05, save_every=2)
    whole = lora_trainer(tiny_lm_dir, cfg, checkpoint_dir=tmp_path / "a").train()
    lora_trainer(tiny_lm_dir, cfg, checkpoint_dir=tmp_path / "b").train(num_updates=3)  # update 3 lost: "killed"
    resumed = lora_trainer(tiny_lm_dir, cfg, checkpoint_dir=tmp_path / "b")
    assert resumed.step_no == 2
    rest = resumed.train()
    skip = ("time/rollout", "time/update", "tokens_per_s")
    for a, b in zip(whole[1:], rest, strict=True):
        assert {k: v for k, v in a.items() if k not in skip} == {k: v for k, v in b.items() if k not in skip}
    assert whole[-1]["value/explained_variance"] != 0.0  # the head did learn something
    finished = lora_trainer(tiny_lm_dir, cfg, checkpoint_dir=tmp_path / "a").model
    for (n, p), q in zip(resumed.model.named_parameters(), finished.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_gradient_checkpointing_recomputes_each_layer_and_gives_the_same_gradients(tiny_lm_dir):
    def grads(checkpointed: bool):
        torch.manual_seed(0)
        tr = lora_trainer(tiny_lm_dir, make_cfg(gradient_checkpointing=checkpointed))
        tr.step()
        b = uneven_batch(tr)
        calls = []
        layer = tr.model.policy.get_base_model().model.layers[0]
        # the layer's first module: the recompute must run it (it may stop early, before the layer's last ones)
        handle = layer.input_layernorm.register_forward_pre_hook(lambda *_: calls.append(1))
        tr.optimizer.zero_grad(set_to_none=True)
        tr.accumulate_gradients(b, torch.arange(len(b)), 8)
        handle.remove()
        return [p.grad.clone() for p in tr.model.parameters() if p.grad is not None], len(calls)

    plain, plain_calls = grads(False)
    checkpointed, checkpointed_calls = grads(True)
    assert (plain_calls, checkpointed_calls) == (1, 2)  # the backward ran the layer again
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not any(m.training for m in AutoModelForCausalLM.from_pretrained(tiny_lm_dir).modules())
    base = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    assert checkpoint_layers(base) == 2
    assert not any(m.training for n, m in base.named_modules() if "dropout" in n or n.endswith("self_attn"))


def test_frozen_models_in_bf16_trained_weights_fp32_and_a_rollout_runs_on_cpu(tmp_path, tiny_lm_dir):
    from transformers import AutoModelForSequenceClassification

    from pipeline.config.schema import PPOSection

    reward = tmp_path / "reward"
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1).save_pretrained(reward)
    AutoTokenizer.from_pretrained(tiny_lm_dir).save_pretrained(reward)
    m = load_models(PPOSection(), str(tiny_lm_dir), str(reward), torch.bfloat16)
    assert m.ref.dtype == m.reward.dtype == torch.bfloat16
    assert m.policy.dtype == m.value.dtype == torch.float32  # fp32 master weights for AdamW
    cfg = dataclasses.replace(PPOSection(), lora=dataclasses.replace(PPOSection().lora, enabled=True, r=4,
                                                                     target_modules=["q_proj", "v_proj"]))
    lora = load_models(cfg, str(tiny_lm_dir), str(reward), torch.bfloat16)
    assert lora.ref is None and isinstance(lora.value, ValueHead)
    dtypes = {n: p.dtype for n, p in lora.policy.named_parameters()}
    assert {d for n, d in dtypes.items() if "lora_" in n} == {torch.float32}
    assert {d for n, d in dtypes.items() if "lora_" not in n} == {torch.bfloat16}
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton: bf16 autocast for this one
    try:
        tr = PPOTrainer(make_cfg(batch_size=8, total_episodes=8, num_minibatches=1), lora.policy, None, lora.reward,
                        lora.value, lora.tokenizer, PROMPTS, show_progress=False,
                        accelerator=Accelerator(cpu=True, mixed_precision="bf16"))
        metrics = tr.step()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())


def test_a_bf16_base_is_merged_in_fp32_so_the_lora_update_survives(tiny_lm_dir, tmp_path):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"], lora_dropout=0.0, task_type="CAUSAL_LM")
    policy = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm_dir, dtype=torch.bfloat16), lora)
    torch.manual_seed(1)
    for n, p in policy.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 1e-3)  # a small update, as PPO's are: below bf16's resolution of the weights
    merged = merged_policy(policy, tmp_path, str(tiny_lm_dir), tok)
    fp32 = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_lm_dir), lora)
    fp32.load_state_dict({k: v for k, v in policy.state_dict().items() if "lora_" in k}, strict=False)
    reference = fp32.merge_and_unload()
    key = "model.layers.0.self_attn.q_proj.weight"
    assert merged.state_dict()[key].dtype == torch.float32
    torch.testing.assert_close(merged.state_dict()[key], reference.state_dict()[key], atol=1e-7, rtol=1e-6)
    naive = policy.merge_and_unload().state_dict()[key].float()  # merged into the bf16 weights: update rounded
    assert (naive - reference.state_dict()[key]).abs().max() > 1e-4
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()


def test_memory_options_never_key_the_run_and_the_value_option_always_does():
    from pipeline.chain.table import key
    from pipeline.config.loader import load_config

    base = load_config("configs/test.yaml")
    saving = load_config("configs/test.yaml", ["ppo.gradient_checkpointing=true", "ppo.check_memory=false"])
    assert key(base, "ppo") == key(saving, "ppo")  # memory, not results: change them and resume
    assert key(base, "ppo")["config"]["ppo"]["lora_value"] == "head"  # no shim: always part of the key

