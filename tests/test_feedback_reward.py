"""The reward stage trains on the feedback people gave (reward.data=...+feedback): the store the tests write
in the run's feedback folder is read beside another source, its rankings, pairs and ties are counted
apart in the report, a fifth of its conversations is held out and measured once there are 50 rankings
(too few: the report says so), and new feedback makes the reward model stale."""

import json

import pytest
import torch

from data.feedback import HELDOUT_MIN_RANKINGS, FeedbackStore, ranking_record, rating_record
from pipeline.artifacts.store import read_manifest
from stages.reward.report import feedback_md
from tests.conftest import tiny_text

POLITE, RUDE = "Thank you for asking.", "Go away, fool."


def _lines(n: int, offset: int) -> list[str]:
    lines = [ln.strip() for ln in tiny_text(60_000).splitlines() if 20 < len(ln.strip()) < 60]
    return lines[offset:offset + n]


def _answers(*texts):
    return [{"text": t, "completion": "chatcmpl-x", "index": i, "model": "sft"} for i, t in enumerate(texts)]


def write_feedback(store: FeedbackStore, rankings: int) -> None:
    """People preferred the polite answer to a question; one rated a pair of answers good and bad."""
    for q, fact in zip(_lines(rankings, 0), _lines(rankings, 200)):
        msgs = [{"role": "user", "content": q}]
        store.append(ranking_record(msgs, _answers(f"{RUDE} {fact}", f"{POLITE} {fact}", fact), [[1], [2], [0]],
                                    labeler="ada@serve"))
    msgs = [{"role": "user", "content": "rated question"}]
    store.append(rating_record(msgs, _answers(POLITE)[0], True, labeler="bob@chat"))
    store.append(rating_record(msgs, _answers(RUDE)[0], False, labeler="bob@chat"))


@pytest.fixture(scope="module")
def feedback_run(tiny_lm_dir, tmp_path_factory):
    from stages.reward.stage import main

    d = tmp_path_factory.mktemp("feedback_reward")
    other = d / "other.jsonl"
    other.write_text("".join(json.dumps({"prompt": q, "chosen": f"{POLITE} {q}", "rejected": f"{RUDE} {q}"}) + "\n"
                             for q in _lines(8, 400)))
    store = FeedbackStore(d / "t" / "feedback")
    write_feedback(store, HELDOUT_MIN_RANKINGS + 5)
    args = ["--config", "configs/test.yaml", f"run.out_dir={d}", "run.name=t", f"reward.init_from={tiny_lm_dir}",
            f"reward.data={other}+feedback", f"reward.val_data={other}", "reward.max_length=96",
            "reward.max_steps=6", "reward.batch_size=6", "reward.eval_every=6", "reward.save_every=6"]
    torch.manual_seed(0)
    assert main(args) == 0
    return d / "t" / "reward", store, args


@pytest.mark.slow
def test_the_reward_model_trains_on_the_feedback_and_the_report_counts_it_apart(feedback_run):
    out, _, _ = feedback_run
    m = read_manifest(out)["metrics"]
    rankings = HELDOUT_MIN_RANKINGS + 5
    assert m["feedback_rankings"] == rankings and m["feedback_ratings"] == 2 and m["feedback_rating_pairs"] == 1
    held = m["feedback_heldout_rankings"]
    assert 0 < held < rankings / 2
    assert m["feedback_ranking_pairs"] == 3 * (rankings - held)  # K=3, no ties: three pairs a ranking
    assert m["data_pairs_in"] == 8 + m["feedback_ranking_pairs"] + 1  # the other file's pairs, then feedback's
    report = (out / "report.md").read_text()
    assert "## Feedback from use" in report and f"| rankings | {rankings} |" in report
    assert f"On the {held} held-out feedback rankings ({3 * held} pairs): pairwise accuracy" in report


@pytest.mark.slow
def test_new_feedback_makes_the_reward_model_stale(feedback_run):
    from pipeline.chain.table import is_up_to_date
    from pipeline.config.cli import stage_config

    _, store, args = feedback_run
    cfg = stage_config("reward", args[:])
    assert is_up_to_date(cfg, "reward", say=False)
    store.append(ranking_record([{"role": "user", "content": "one more"}], _answers("a", "b"), [[0], [1]],
                                labeler="ada@serve"))
    assert not is_up_to_date(cfg, "reward", say=False)


def test_with_too_few_rankings_the_report_says_so_instead_of_an_accuracy(tmp_path):
    from data.feedback import feedback_data

    store = FeedbackStore(tmp_path)
    write_feedback(store, 3)
    lines = "\n".join(feedback_md(feedback_data(tmp_path).counts))
    assert "Too few feedback rankings to hold some out (3, fewer than 50)" in lines
    assert "| pairs from rankings (trained on) | 9 |" in lines and "| rated bad | 1 |" in lines
