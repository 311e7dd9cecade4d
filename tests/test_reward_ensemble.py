"""A reward-model ensemble (reward.ensemble=k) and the conservative reward PPO, GRPO and RLOO read from it
(ppo.reward_aggregate: mean, min, mean - lambda std; Coste et al. 2023): the aggregate's arithmetic, the
ensemble scoring as one model wherever one reward model is scored, the reward stage training k different
members into one artifact whose first member is the k=1 model, and the keys that make what stale."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.chain.table import key
from pipeline.config.loader import load_config
from pipeline.judge.ensemble import RewardEnsemble, aggregate, standardise, with_ensemble
from tests.test_reward_train import _lines, _rankings, _write_jsonl

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "test.yaml")


# --- the aggregate: a pure function ---------------------------------------------------------------------

def test_the_aggregates_of_member_scores():
    scores = torch.tensor([[1.0, 0.0, 2.0],
                           [3.0, 0.0, -2.0]])  # two members, three answers
    assert aggregate(scores, "mean").tolist() == [2.0, 0.0, 0.0]
    assert aggregate(scores, "min").tolist() == [1.0, 0.0, -2.0]
    # population std over the members: 1, 0, 2
    assert aggregate(scores, "mean_minus_std", 0.5).tolist() == [1.5, 0.0, -1.0]
    assert aggregate(scores, "mean_minus_std", 0.0).tolist() == aggregate(scores, "mean").tolist()


def test_members_that_agree_make_every_aggregate_their_common_score():
    one = torch.tensor([[0.3, -1.2, 2.0]])
    for how in ("mean", "min", "mean_minus_std"):
        assert aggregate(one, how, 1.0).tolist() == one[0].tolist()  # one member: no disagreement
        assert aggregate(one.repeat(3, 1), how, 1.0).tolist() == pytest.approx(one[0].tolist())


def test_the_conservative_aggregates_penalise_disagreement():
    agree, disagree = torch.tensor([[1.0], [1.0]]), torch.tensor([[0.0], [2.0]])  # the same mean
    assert aggregate(agree, "mean") == aggregate(disagree, "mean")
    for how in ("min", "mean_minus_std"):
        assert aggregate(disagree, how, 1.0) < aggregate(agree, how, 1.0)


def test_an_unknown_aggregate_is_refused():
    with pytest.raises(ValueError, match="unknown reward aggregate 'max'"):
        aggregate(torch.zeros(2, 3), "max")


def test_members_are_put_on_one_scale_before_aggregating():
    """Bradley-Terry scores are defined up to a shift and a scale: a member that says the same as another in
    other units must not count as disagreeing."""
    base = torch.tensor([0.0, 1.0, 2.0])
    raw = torch.stack([base, 10 + 3 * base])
    z = standardise(raw, [(1.0, 1.0), (13.0, 3.0)])
    assert z[0].tolist() == z[1].tolist()
    assert aggregate(z, "mean_minus_std", 1.0).tolist() == aggregate(z, "mean").tolist()


# --- the ensemble scores as one reward model ------------------------------------------------------------

def scorer(tiny_lm_dir, seed):
    torch.manual_seed(seed)
    m = AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1).eval()
    m.config.pad_token_id = AutoTokenizer.from_pretrained(tiny_lm_dir).pad_token_id
    return m


def test_an_ensemble_scores_as_one_model_in_every_scorer(tiny_lm_dir):
    from pipeline.judge.scoring import score_conversations
    from stages.ppo.rollout import sequence_scores

    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    members = [scorer(tiny_lm_dir, s) for s in (0, 1)]
    scale = [(0.1, 2.0), (-0.3, 0.5)]
    ensemble = RewardEnsemble(members, scale, "mean_minus_std", 0.7)
    prompts = [[{"role": "user", "content": "What does len return?"}]] * 3
    answers = ["The number of items.", "A list.", "Nothing at all, ever."]
    each = torch.stack([score_conversations(m, tok, prompts, answers) for m in members])
    expected = aggregate(standardise(each, scale), "mean_minus_std", 0.7)
    assert score_conversations(ensemble, tok, prompts, answers) == pytest.approx(expected.tolist(), abs=1e-5)
    # PPO's lean forward on token ids: the same aggregate
    ids = [tok.apply_chat_template(p + [{"role": "assistant", "content": a}], tokenize=True, return_dict=True)["input_ids"]
           for p, a in zip(prompts, answers)]
    width = max(map(len, ids))
    input_ids = torch.tensor([x + [tok.pad_token_id] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    lean = sequence_scores(ensemble, input_ids, mask)
    each_lean = torch.stack([sequence_scores(m, input_ids, mask) for m in members])
    assert lean.tolist() == pytest.approx(aggregate(standardise(each_lean, scale), "mean_minus_std", 0.7).tolist())


def test_a_single_reward_model_is_read_as_it_always_was(tiny_lm_dir, tmp_path):
    m = scorer(tiny_lm_dir, 0)
    assert with_ensemble(m, tmp_path, how="min", coef=1.0) is m  # no reward_ensemble.json: no wrapper at all


# --- the reward stage trains k members into one artifact ------------------------------------------------

def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_an_ensemble_of_two_trains_two_different_models_the_first_the_single_one(tiny_lm_dir, tmp_path):
    from stages.reward.stage import main
    from stages.reward.statistics import main as measure

    train = _write_jsonl(tmp_path / "rank_train.jsonl", _rankings(24, 1))
    held = _write_jsonl(tmp_path / "rank_held.jsonl", _rankings(8, 2))
    prompts = _write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": q} for q in _lines(4, 3)])
    common = ["--config", CONFIG, f"run.out_dir={tmp_path}", f"reward.init_from={tiny_lm_dir}", f"reward.data={train}",
              f"reward.val_data={held}", "reward.max_length=96", "reward.max_steps=6", "reward.batch_size=6",
              "reward.lr=0.003", "reward.eval_every=6", "reward.save_every=6", "reward.warmup_ratio=0.0"]
    assert main(common + ["run.name=one"]) == 0
    assert main(common + ["run.name=two", "reward.ensemble=2"]) == 0
    one, two = tmp_path / "one" / "reward", tmp_path / "two" / "reward"
    info = json.loads((two / "reward_ensemble.json").read_text())
    assert info["members"] == [".", "ensemble/1"] and info["seeds"] == [1337, 1338]
    # the first member is exactly the k=1 model; the second trained from another seed
    assert sha(two / "model.safetensors") == sha(one / "model.safetensors")
    assert sha(two / "ensemble" / "1" / "model.safetensors") != sha(one / "model.safetensors")
    assert not (one / "reward_ensemble.json").exists() and not (one / "ensemble").exists()
    report = (two / "report.md").read_text()
    assert "## The ensemble (reward.ensemble=2)" in report and "| ensemble, min |" in report
    manifest = json.loads((two / "manifest.json").read_text())["metrics"]
    assert manifest["ensemble_k"] == 2 and 0 <= manifest["ensemble_mean_heldout_accuracy"] <= 1
    # the statistics PPO normalises by are the aggregate's, and say so
    stats_args = ["--config", CONFIG, f"run.out_dir={tmp_path}", "run.name=two", f"ppo.policy={tiny_lm_dir}",
                  f"ppo.data={prompts}", "reward.stats_prompts=4", "ppo.max_new_tokens=6"]
    assert measure(stats_args + ["ppo.reward_aggregate=min"]) == 0
    stats = json.loads((tmp_path / "two" / "reward-stats" / "reward_stats.json").read_text())
    assert stats["ensemble"] == 2 and stats["reward_aggregate"] == "min"


def test_an_ensemble_without_held_out_data_of_its_own_is_refused(tiny_lm_dir, tmp_path, capsys):
    from stages.reward.stage import main

    train = _write_jsonl(tmp_path / "rank_train.jsonl", _rankings(8, 1))
    with pytest.raises(SystemExit) as e:
        main(["--config", CONFIG, f"run.out_dir={tmp_path}", "run.name=t", f"reward.init_from={tiny_lm_dir}",
              f"reward.data={train}", "reward.ensemble=2"])
    assert e.value.code == 2
    assert "reward.ensemble=2 needs held-out preferences outside reward.data" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


# --- what each key makes stale --------------------------------------------------------------------------

def test_the_default_ensemble_and_aggregate_leave_every_key_as_it_was(tmp_path):
    base = load_config(CONFIG, [f"run.out_dir={tmp_path}"])
    for stage in ("reward", "reward-stats", "ppo", "grpo", "rloo"):
        config = key(base, stage)["config"]
        assert "ensemble" not in config.get("reward", {}), stage
        assert not {"reward_aggregate", "reward_uncertainty_coef"} & set(config.get("ppo", {})), stage


def test_an_ensemble_retrains_the_reward_model_and_an_aggregate_rescores_what_reads_it(tmp_path):
    base = load_config(CONFIG, [f"run.out_dir={tmp_path}"])
    k2 = load_config(CONFIG, [f"run.out_dir={tmp_path}", "reward.ensemble=2"])
    assert key(k2, "reward") != key(base, "reward")
    conservative = load_config(CONFIG, [f"run.out_dir={tmp_path}", "ppo.reward_aggregate=mean_minus_std",
                                        "ppo.reward_uncertainty_coef=0.5"])
    for stage in ("reward-stats", "ppo", "grpo", "rloo"):
        assert key(conservative, stage)["config"]["ppo"]["reward_aggregate"] == "mean_minus_std", stage
    assert key(conservative, "reward") == key(base, "reward")
    assert key(conservative, "dpo") == key(base, "dpo")  # DPO is not rewarded by the reward model


def ensemble_dir(tiny_lm_dir, root: Path) -> Path:
    """A reward artifact holding two members by hand (the reward stage's layout)."""
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    for seed, sub in ((0, "."), (1, "ensemble/1")):
        scorer(tiny_lm_dir, seed).save_pretrained(root / sub)
        tok.save_pretrained(root / sub)
    (root / "reward_ensemble.json").write_text(json.dumps({"members": [".", "ensemble/1"],
                                                           "scale": [[0.0, 1.0], [0.2, 0.5]]}))
    return root


def test_ppo_and_the_trl_reward_function_score_by_the_aggregate_the_config_names(tiny_lm_dir, tmp_path):
    from pipeline.judge.scoring import RewardFunction
    from stages.ppo.models import load_models

    rm_dir = ensemble_dir(tiny_lm_dir, tmp_path / "reward")
    cfg = load_config(CONFIG, [f"run.out_dir={tmp_path}", "ppo.reward_aggregate=mean_minus_std",
                               "ppo.reward_uncertainty_coef=2.0"])
    models = load_models(cfg.ppo, tiny_lm_dir, str(rm_dir))
    assert isinstance(models.reward, RewardEnsemble) and len(models.reward.members) == 2
    assert (models.reward.how, models.reward.coef) == ("mean_minus_std", 2.0)
    tok = models.tokenizer
    prompt = tok.apply_chat_template([{"role": "user", "content": "What does len return?"}], tokenize=True,
                                     add_generation_prompt=True, return_dict=True)["input_ids"]
    answers = [tok.encode("The number of items.", add_special_tokens=False), tok.encode("A list.", add_special_tokens=False)]
    fn = RewardFunction(models.reward, tok)  # GRPO/RLOO: raw aggregate, no normalisation, no penalty
    got = fn.score_ids([prompt, prompt], answers)
    each = torch.stack([RewardFunction(m, tok).score_ids([prompt, prompt], answers) for m in models.reward.members])
    assert got.tolist() == pytest.approx(aggregate(standardise(each, [(0.0, 1.0), (0.2, 0.5)]), "mean_minus_std",
                                                   2.0).tolist(), abs=1e-5)
