"""The judge every report uses (pipeline/judge: generate -> score -> compare) and the one rule that picks
report prompts (data/report_prompts.py): PPO's development report, the DPO/GRPO/RLOO report, eval and
compare judge the same model pair on the same prompts alike."""

import json
from pathlib import Path

import pytest
import torch
from eval_fixtures import fake_run
from transformers import AutoModelForCausalLM, AutoTokenizer

from data.report_prompts import report_prompts
from pipeline.config.loader import load_config
from pipeline.errors import UserError
from pipeline.judge.answering import Sampling, answer, load_chat_model
from pipeline.judge.comparison import ModelAnswers, compare_answers
from pipeline.judge.evaluate import RewardJudge, reward_max_length, score_gold

CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "test.yaml")


def prompt_file(path: Path, name: str, n: int, gold: str | None = "the answer") -> Path:
    f = path / f"{name}.jsonl"
    f.write_text("".join(json.dumps({"prompt": f"{name} question {i}", **({"gold": f"{gold} {i}"} if gold else {})})
                         + "\n" for i in range(n)))
    return f


def question(p) -> str:
    return p[-1]["content"]


# --- which prompts ---------------------------------------------------------------------------------------

def test_training_reports_share_the_development_prompts_and_eval_and_compare_the_test_prompts(tmp_path):
    dev, test = prompt_file(tmp_path, "dev", 8), prompt_file(tmp_path, "test", 8)
    cfg = load_config(CONFIG, [f"run.out_dir={tmp_path}", f"ppo.eval_data={dev}", f"eval.prompts={test}",
                               "ppo.report_prompts=3", "ppo.report_samples=2", "dpo.report_prompts=3",
                               "grpo.report_prompts=2", "eval.num_prompts=4"])
    ppo = report_prompts(cfg, "ppo")
    # the first three in file order, the whole list twice: its first pass is the one-answer report
    assert [question(p) for p in ppo.prompts] == [f"dev question {i}" for i in (0, 1, 2, 0, 1, 2)]
    assert ppo.golds == [f"the answer {i}" for i in (0, 1, 2, 0, 1, 2)]
    assert (ppo.split, ppo.source, ppo.samples, ppo.distinct) == ("development", str(dev), 2, 3)
    dpo, grpo = report_prompts(cfg, "dpo"), report_prompts(cfg, "grpo")
    assert dpo.prompts == ppo.prompts[:3] and dpo.samples == 1 and dpo.source == str(dev)
    assert grpo.prompts == ppo.prompts[:2]  # a smaller report is a prefix of a larger one
    for report in ("eval", "compare"):
        chosen = report_prompts(cfg, report)
        assert [question(p) for p in chosen.prompts] == [f"test question {i}" for i in range(4)]
        assert (chosen.split, chosen.source, chosen.samples) == ("test", str(test), 1)
    every = report_prompts(load_config(CONFIG, [f"run.out_dir={tmp_path}", f"ppo.eval_data={dev}",
                                                "ppo.report_samples=1"]), "ppo")
    assert len(every.prompts) == 8  # ppo.report_prompts null: all of them


def test_without_development_or_test_prompts_the_reports_say_why(tmp_path):
    train, empty = prompt_file(tmp_path, "train", 10), tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = load_config(CONFIG, [f"run.out_dir={tmp_path}", f"ppo.data={train}", "eval.prompts=none"])
    dpo = report_prompts(cfg, "dpo")
    assert dpo.prompts == [] and "ppo.eval_data is not set" in dpo.source
    assert report_prompts(cfg, "eval").source == "eval.prompts=none"
    with pytest.raises(UserError, match=f"{empty}: no usable prompt records"):
        report_prompts(load_config(CONFIG, [f"run.out_dir={tmp_path}", f"eval.prompts={empty}"]), "compare")


# --- generate, score, compare ------------------------------------------------------------------------

def test_a_comparison_of_hand_made_answers():
    cand = ModelAnswers("ppo", ["a b c", "a b c d e f g h", "x"], rm_scores=[2.0, 3.0, 0.0], gold_scores=[0.1, 0.1, 0.5],
                        logprobs=[[-1.0], [-1.0, -1.0], [-2.0]])
    base = ModelAnswers("sft", ["a b c", "a b", "y"], rm_scores=[1.0, 1.0, 0.0], gold_scores=[0.2, 0.2, 0.5])
    under_base = [[-2.0], [-1.5, -1.5], [-2.0]]
    prompts = [[{"role": "user", "content": q}] for q in ("a?", "b?", "c?")]
    c = compare_answers(cand, base, prompts, kl_budget=10.0, under_baseline=under_base)
    assert c["win_rate_rm"]["win_rate"] == pytest.approx(2.5 / 3)  # 2 wins, 1 tie
    assert c["win_rate_gold"]["win_rate"] == pytest.approx(0.5 / 3)  # the RM was fooled: 2 losses, 1 tie
    assert c["matched_length_pairs"] == 2  # the 8-word vs 2-word pair is left out
    assert c["win_rate_rm_matched_length"]["win_rate"] == pytest.approx(1.5 / 2)
    assert c["kl"]["k1_mean"] == pytest.approx((1.0 + 1.0 + 0.0) / 3)
    assert "tokenizers" in compare_answers(cand, base, prompts, kl_budget=10.0, under_baseline=None)["kl_skipped"]
    cand.logprobs = None  # greedy answers
    assert "greedy" in compare_answers(cand, base, prompts, kl_budget=10.0, under_baseline=under_base)["kl_skipped"]


def test_gold_scores_need_a_gold_answer_for_every_prompt():
    a = ModelAnswers("ppo", ["return the square root", "no idea"])
    assert score_gold([a], ["Return the square root of x.", None], len) == "gold metric: 1 of 2 prompts have no gold answer"
    assert a.gold_scores is None
    assert score_gold([a], ["x", "y"], lambda answer, gold: len(answer)) == ""
    assert a.gold_scores == [22.0, 7.0]


@pytest.fixture(scope="module")
def run(tiny_lm_dir, tmp_path_factory):
    """runs/fx (pretrain, sft, ppo = sft nudged, reward) and six prompts whose gold answer is letter soup, so
    that the random tiny models' answers score above zero and differ in gold."""
    root = tmp_path_factory.mktemp("judge")
    runs = fake_run(root, tiny_lm_dir)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What does function {i} do?", "gold": "p l c u s t e n r my his i k"})
                               + "\n" for i in range(6)))
    return root, runs / "fx", prompts


def test_answers_are_seeded_and_a_prompt_over_the_context_is_cut_and_counted(run, capsys):
    _, fx, _ = run
    model, tok = load_chat_model(str(fx / "sft"), torch.device("cpu"))
    model.train()
    long = [[{"role": "user", "content": "word " * 200}], [{"role": "user", "content": "Hi"}]]
    sampling = Sampling(temperature=1.0, max_new_tokens=8, seed=3, section="ppo")
    a, b = (answer(model, tok, long, sampling, name="sft") for _ in range(2))
    assert a.answer_ids == b.answer_ids and a.answers == b.answers and model.training  # its mode is given back
    assert max(len(p) for p in a.prompt_ids) == model.config.max_position_embeddings - 8
    assert "ppo sft: 1 of 2 prompts are over the context" in capsys.readouterr().out
    assert [len(lp) for lp in a.logprobs] == [len(x) for x in a.answer_ids]
    assert answer(model, tok, long, Sampling(0.0, 8, seed=3), name="sft").logprobs is None  # greedy: no KL


def test_the_reward_judge_reports_ppos_units_when_given_the_statistics(run):
    _, fx, prompts_file = run
    raw = RewardJudge.load(str(fx / "reward"), torch.device("cpu"))
    normalised = RewardJudge(raw.model, raw.tokenizer, raw.max_length, stats=(0.5, 2.0))
    prompts = [[{"role": "user", "content": "Hi"}], [{"role": "user", "content": "What?"}]]
    answers = ModelAnswers("sft", ["Hello there.", "It returns the square root."])
    assert normalised.score(prompts, answers) == pytest.approx([(s - 0.5) / 2.0 for s in raw.score(prompts, answers)])


def test_the_four_reports_judge_a_model_pair_alike(run):
    """PPO's development report, the DPO/GRPO/RLOO report, eval and compare, given the same pair (ppo
    against sft), the same prompts and the same sampling, give the same comparison; PPO's and the align
    report's RM scores are the raw ones normalised by the reward statistics."""
    from stages.align.report import heldout_report, sampling
    from stages.compare import evaluator
    from stages.eval.stage import evaluate
    from stages.ppo.evaluation import development_report

    root, fx, prompts = run
    same = ["temperature=1.0", "max_new_tokens=10"]
    cfg = load_config(CONFIG, [
        "run.name=fx", f"run.out_dir={fx.parent}", "run.seed=5", "eval.seed=5", f"eval.prompts={prompts}",
        f"ppo.eval_data={prompts}", "eval.models=[sft,ppo]", "eval.lm_data=none", "eval.batch_size=32",
        "ppo.forward_batch_size=32", "ppo.report_samples=1", "eval.num_prompts=6", "dpo.report_prompts=6",
        *(f"{s}.{k}" for s in ("eval", "ppo", "dpo") for k in same)])
    stats, device = (0.5, 2.0), torch.device("cpu")

    by_eval = json.loads((evaluate(cfg) / "report.json").read_text())["comparisons"][-1]
    models = [evaluator.Evaluated(n, str(fx / n), {}) for n in ("sft", "ppo")]
    evaluator.answer_each(cfg, models, device, torch.float32)
    answered, _, _ = evaluator.judge_all(cfg, models, device)
    under = evaluator.logprobs_under_baseline(cfg, models[0], models[1:], device)
    by_compare = evaluator.versus_baseline(cfg, models[0], models[1:], answered, device, under)[0]

    tok = AutoTokenizer.from_pretrained(fx / "sft")
    ppo, sft = (AutoModelForCausalLM.from_pretrained(fx / n).eval() for n in ("ppo", "sft"))
    rm = RewardJudge.load(str(fx / "reward"), device)
    by_ppo = development_report(ppo, sft, rm.model, tok, report_prompts(cfg, "ppo"), ppo_cfg=cfg.ppo, seed=cfg.run.seed,
                                score_stats=stats, reward_max_length=reward_max_length(str(fx / "reward")))
    by_align, _ = heldout_report(ppo, sft, tok, report_prompts(cfg, "dpo"), sampling(cfg, "dpo"), method="dpo",
                                 reward=RewardJudge(rm.model, rm.tokenizer, rm.max_length, stats=stats),
                                 kl_budget=cfg.ppo.kl_budget)

    same_in_all = ("answers", "prompts", "words_candidate", "words_baseline", "win_rate_rm", "win_rate_gold",
                   "win_rate_rm_matched_length", "gold_candidate", "gold_baseline", "gold_difference", "kl",
                   "rm_gold_spearman")
    for c in (by_compare, by_ppo, by_align):
        for k in same_in_all:
            assert c[k] == pytest.approx(by_eval[k]), k
        assert c["quality_bar"]["gold_state"] == by_eval["quality_bar"]["gold_state"]
    for c in (by_ppo, by_align):  # the same raw scores, in PPO's units
        assert c["rm_candidate"] == pytest.approx((by_eval["rm_candidate"] - 0.5) / 2.0)
    assert by_compare["rm_candidate"] == pytest.approx(by_eval["rm_candidate"])
    # the comparison is not degenerate: gold and the RM see differences, the models are apart
    assert by_eval["gold_candidate"] != by_eval["gold_baseline"] and by_eval["kl"]["k1_mean"] > 0
    assert by_eval["answers"] == 6
