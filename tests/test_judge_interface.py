"""The held-out judge (`judge.gold`, pipeline/judge/gold.py): one protocol -- score(prompts, answers, golds)
-> one score per answer, None where it cannot judge -- and four kinds (the demo's gold metric, a second
reward model, held-out human rankings, a causal LM), chosen in the config; every report's gold numbers
come from it, and the stages that report gold are keyed on it."""

import json
from pathlib import Path

import pytest
from stage_fixtures import sft_and_reward

from data.gold import gold_score
from data.held_out_judge import held_out_judge
from pipeline.chain.table import key
from pipeline.config.loader import load_config
from pipeline.errors import UserError
from pipeline.judge.comparison import ModelAnswers, compare_models
from pipeline.judge.evaluate import score_gold
from pipeline.judge.gold import RankingsGold

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "test.yaml")
Q1 = [{"role": "user", "content": "What does str.find return?"}]
Q2 = [{"role": "user", "content": "What does len return?"}]
BEST, MIDDLE, WORST = ("the lowest index where the substring is found", "an index of the string",
                       "a list of every word in lowercase")


def config(tmp_path, gold: str):
    return load_config(CONFIG, [f"run.out_dir={tmp_path}", f"judge.gold={gold}"])


def rankings_file(tmp_path) -> Path:
    f = tmp_path / "heldout_rankings.jsonl"
    f.write_text(json.dumps({"prompt": Q1, "responses": [WORST, BEST, MIDDLE], "ranking": [1, 2, 0]}) + "\n")
    return f


@pytest.mark.parametrize("value", ["gold", "reward:", "rankings", "model: ", "", "judge:x"])
def test_a_judge_the_config_cannot_name_is_one_line(tmp_path, value):
    with pytest.raises(UserError, match=r"judge\.gold"):  # YAML reads "reward:" as a mapping: refused too
        config(tmp_path, value)


def test_the_demo_judge_is_the_gold_metric_against_each_prompts_reference(tmp_path):
    judge = held_out_judge(config(tmp_path, "demo"))
    scores = judge.score([Q1, Q2], [BEST, "returns the length"], [BEST, None])
    assert judge.name == "demo"
    assert scores == [gold_score(BEST, BEST), None]  # a prompt without a reference answer is not judged


def test_the_rankings_judge_orders_answers_as_people_ordered_the_answers_they_resemble(tmp_path):
    judge = held_out_judge(config(tmp_path, f"rankings:{rankings_file(tmp_path)}"))
    best, middle, worst, unrelated, other = judge.score([Q1, Q1, Q1, Q1, Q2],
                                                        [BEST, MIDDLE, WORST, "zebra quantum", BEST], [None] * 5)
    assert best > middle > worst
    assert unrelated == 0  # resembles none of the ranked answers
    assert other is None  # people ranked nothing for this prompt


def test_rankings_utilities_run_from_the_best_tier_to_the_worst_and_ties_share_one():
    judge = RankingsGold([{"prompt": Q1, "responses": ["a", "b", "c"], "groups": [[0], [1, 2]]}],
                         lambda x, y: float(x == y), "rankings:t")
    assert judge.score([Q1, Q1, Q1], ["a", "b", "c"], [None] * 3) == pytest.approx([2 / 3, -1 / 3, -1 / 3])


def test_a_second_reward_model_judges_by_its_raw_score(tmp_path, tiny_lm_dir):
    from pipeline.judge.evaluate import RewardJudge

    sft_and_reward(tiny_lm_dir, tmp_path)
    rm_dir = tmp_path / "runs" / "t" / "reward"
    judge = held_out_judge(config(tmp_path, f"reward:{rm_dir}"))
    scores = judge.score([Q1, Q1], [BEST, WORST], [None, None])
    expected = RewardJudge.load(str(rm_dir), None).score([Q1, Q1], ModelAnswers("x", [BEST, WORST]))
    assert scores == pytest.approx(expected, abs=1e-6) and scores[0] != scores[1]
    assert judge.name == f"reward:{rm_dir}"


def test_a_model_judge_reads_the_reference_answer_and_refuses_a_reward_model(tmp_path, tiny_lm_dir):
    judge = held_out_judge(config(tmp_path, f"model:{tiny_lm_dir}"))
    without, with_best, with_worst = (judge.score([Q1], [BEST], [g])[0] for g in (None, BEST, WORST))
    assert all(s < 0 for s in (without, with_best, with_worst))  # mean token log-probabilities
    assert len({without, with_best, with_worst}) == 3  # the reference is part of what the LM reads
    sft_and_reward(tiny_lm_dir, tmp_path)
    with pytest.raises(UserError, match="reward model"):
        held_out_judge(config(tmp_path, f"model:{tmp_path / 'runs' / 't' / 'reward'}"))


def test_gold_win_rates_come_from_the_configured_judge(tmp_path):
    judge = held_out_judge(config(tmp_path, f"rankings:{rankings_file(tmp_path)}"))
    tuned, sft = ModelAnswers("tuned", [BEST, MIDDLE]), ModelAnswers("sft", [WORST, WORST])
    assert score_gold([tuned, sft], [None, None], judge, [Q1, Q1]) == ""
    c = compare_models(tuned, sft, [Q1, Q1], kl_budget=1.0)
    assert c["win_rate_gold"]["win_rate"] == 1.0 and c["gold_difference"]["mean"] > 0
    # an unmatched prompt leaves no gold numbers, and says why
    fresh = [ModelAnswers("tuned", [BEST]), ModelAnswers("sft", [WORST])]
    why = score_gold(fresh, [None], judge, [Q2])
    assert "1 of 1 answers have nothing to be judged by" in why and fresh[0].gold_scores is None


def test_the_stages_that_report_gold_are_keyed_on_the_judge_and_what_it_names(tmp_path):
    ranks = rankings_file(tmp_path)
    demo, judged = config(tmp_path, "demo"), config(tmp_path, f"rankings:{ranks}")
    for stage in ("ppo", "grpo", "rloo", "dpo", "eval", "compare"):
        before, after = key(demo, stage), key(judged, stage)
        assert "judge" not in before["config"]  # the default keeps the keys of artifacts made before it
        assert after["config"]["judge"] == {"gold": f"rankings:{ranks}"}
        assert after["inputs"]["gold"] != before["inputs"].get("gold")
    edited = key(judged, "ppo")["inputs"]["gold"]
    ranks.write_text(ranks.read_text().replace("lowest", "highest"))
    assert key(judged, "ppo")["inputs"]["gold"] != edited  # an edited rankings file makes them stale
    for stage in ("sft", "reward", "reward-stats"):
        assert key(demo, stage) == key(judged, stage)

