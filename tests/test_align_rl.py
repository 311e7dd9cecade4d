"""GRPO and RLOO: the reward they optimise is PPO's, number for number, and each learns a
programmatic reward in the right direction."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.config.loader import load_config
from pipeline.config.schema import PPOSection
from pipeline.judge.scoring import RewardFunction, score_ids
from pipeline.lm.hf_glue import MetricsCallback
from stages.align import online
from stages.ppo.rollout import RolloutBatch, encode_prompts, left_pad, truncate_after_eos
from stages.ppo.trainer import PPOTrainer

PROMPTS = ["What is a list?", "Explain dict.get", "Who wrote the tempest", "Say hello", "How do loops work?",
           "Name a colour", "What is pi", "Open a file"]
TARGET = set(range(100, 164))  # an eighth of the vocabulary: the programmatic reward asks for these tokens


def test_reward_function_gives_ppo_numbers_on_the_same_answers(tiny_lm_dir):
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    torch.manual_seed(0)
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1)
    policy = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    settings = dict(missing_eos_penalty=1.5, missing_eos_mode="subtract", reward_clip=1.0)
    # Answers of different lengths; half end with EOS (then PAD), half were cut at the length limit.
    g = torch.Generator().manual_seed(1)
    answers = torch.randint(10, 500, (8, 9), generator=g)
    for row, end in enumerate([2, 8, 4, None, 0, None, 6, None]):
        if end is not None:
            answers[row, end] = tok.eos_token_id
    prompt_ids, _ = encode_prompts(tok, PROMPTS, 10**9)
    q, qm = left_pad(prompt_ids, tok.pad_token_id)
    b = RolloutBatch(q, qm, *truncate_after_eos(answers, tok.eos_token_id, tok.pad_token_id))
    raw = score_ids(rm, [p + a for p, a in zip(prompt_ids, [r[m].tolist() for r, m in zip(answers, b.response_mask)])],
                    tok.pad_token_id)
    # Normalisation stats chosen so that, whatever the random score head, some answers ending in EOS
    # fall within the clip (|z| < 1) and some beyond it: the test then exercises both.
    ended = raw[torch.tensor([True, True, True, False, True, False, True, False])]
    centre = ended.median().item()
    dist = (ended - centre).abs().sort().values
    stats = (centre, ((dist[0] + dist[-1]) / 2).item())
    ppo = PPOTrainer(PPOSection(batch_size=8, num_minibatches=1, forward_batch_size=3, **settings), policy, policy,
                     rm, AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1), tok,
                     PROMPTS, reward_stats=stats, show_progress=False)
    ppo_scores = ppo.score_rollout(b).scores

    reward = RewardFunction(rm, tok, mean=stats[0], std=stats[1], clip=settings["reward_clip"],
                            missing_eos_penalty=settings["missing_eos_penalty"], batch_size=5)
    completion_ids = [r[m].tolist() for r, m in zip(b.response_ids, b.response_mask)]  # what TRL hands over
    ours = reward(prompts=[[{"role": "user", "content": p}] for p in PROMPTS], completions=None,
                  completion_ids=completion_ids)
    assert b.has_eos.tolist() == [True, True, True, False, True, False, True, False]
    within = ppo_scores.abs() < 1.0 - 1e-6
    assert within[b.has_eos].any() and not within[b.has_eos].all()  # the clip matters
    assert (ppo_scores[~b.has_eos] <= -0.5).all()  # and so does the penalty
    torch.testing.assert_close(torch.tensor(ours), ppo_scores, atol=1e-5, rtol=1e-5)
    assert reward.scored == 8


def target_share(prompts, completions, completion_ids, **_) -> list[float]:
    """Programmatic reward: the share of answer tokens drawn from TARGET (about 1/8 at random)."""
    return [sum(t in TARGET for t in ids) / max(1, len(ids)) for ids in completion_ids]


@torch.no_grad()
def target_mass(model, tok) -> float:
    """Mean probability the policy gives TARGET tokens as the first answer token: no sampling noise."""
    ids, mask = left_pad(encode_prompts(tok, PROMPTS, 10**9)[0], tok.pad_token_id)
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, -1]
    return logits.softmax(-1)[:, sorted(TARGET)].sum(-1).mean().item()


@pytest.mark.parametrize("method", ["rloo", "grpo"])
def test_rl_method_learns_a_programmatic_reward_in_the_right_direction(tiny_lm_dir, tmp_path, method):
    cfg = load_config("configs/test.yaml", [f"{method}.lr=5e-2", f"{method}.beta=0.0", f"{method}.max_new_tokens=4",
                                            f"{method}.batch_size=16", f"{method}.temperature=1.0"])
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    tok.padding_side = "left"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir)
    before = target_mass(model, tok)
    prompts, _ = online.prompt_dataset(PROMPTS * 4, tok, 128, method)
    trainer = online.build_trainer(method, cfg, model, tok, prompts, target_share, output_dir=tmp_path,
                                   callback=MetricsCallback(tmp_path, desc=method, enabled=False), max_steps=8)
    trainer.train()
    after = target_mass(trainer.model, tok)
    assert after > before * 1.25, (before, after)  # from ~1/8 up (measured ~1.4x); a sign error pushes it down
