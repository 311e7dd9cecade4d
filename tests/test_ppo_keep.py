"""The over-optimisation curve during PPO and the best point on it (stages/ppo/curve.py): every development
evaluation is a point (proxy, gold, win rates over SFT, KL k1/k3, length); keep=best commits the point with the best
gold and survives a kill; early stop ends a run whose gold stopped improving; the stage says what it kept."""

import json

import pytest
import torch

from pipeline.artifacts.metrics import read_metrics
from pipeline.artifacts.store import read_manifest
from stages.ppo.stage import main
from tests import test_ppo_stage
from tests.test_ppo_stage import argv
from tests.test_ppo_trainer import make_cfg, make_trainer

DEV = ["Describe a tuple", "What is a set?", "Explain range", "What does len do?"]


class WordyIsGold:
    """A held-out judge with a taste of its own (more words are better), unlike the reward PPO optimises: on the
    tiny model its score rises for two updates and then falls, as gold does when the proxy is over-optimised."""

    name = "wordy"

    def score(self, prompts, answers, golds):
        return [float(a.count(" ")) for a in answers]


def trainer(lm_dir, tmp, name, **cfg):
    return make_trainer(lm_dir, make_cfg(**cfg), out_dir=tmp / name, checkpoint_dir=tmp / f"{name}_ckpt",
                        eval_prompts=DEV, gold_judge=WordyIsGold())


def test_each_evaluation_is_a_point_with_kl_win_rates_and_length_logged(tiny_lm_dir, tmp_path):
    t = trainer(tiny_lm_dir, tmp_path, "a", total_episodes=16 * 2, sample_every=1)
    t.train()
    points = t.curve.points
    assert [p["step"] for p in points] == [0, 1, 2]
    start = points[0]
    # update 0 is SFT answering: KL 0 (the policy is the reference), ties with itself on every prompt
    assert start["kl_k1"] == 0 and start["kl_k3"] == 0 and start["win_rate_proxy"] == 0.5 == start["win_rate_gold"]
    assert points[-1]["kl_k3"] > 0 and points[-1]["kl_k3_token"] < points[-1]["kl_k3"]  # per token < per answer
    logged = [r for r in read_metrics(tmp_path / "a") if "eval/kl_k3" in r]
    assert [r["step"] for r in logged] == [0, 1, 2]
    assert logged[-1]["eval/kl_k1"] == pytest.approx(points[-1]["kl_k1"], abs=1e-6)  # metrics.jsonl keeps 6 decimals
    assert {"eval/gold", "eval/win_rate_gold", "eval/win_rate_proxy", "eval/response_length"} <= set(logged[-1])


def test_keep_best_survives_a_kill_and_restores_the_weights_that_scored_best(tiny_lm_dir, tmp_path):
    kw = dict(total_episodes=16 * 4, sample_every=1, save_every=2, keep="best")
    whole = trainer(tiny_lm_dir, tmp_path, "a", **kw)
    whole.train()
    best = whole.curve.best
    assert best["step"] not in (0, 4), "the judge should prefer a middle update for this test to mean anything"
    trainer(tiny_lm_dir, tmp_path, "b", **kw).train(num_updates=3)  # checkpoint after update 2; 3 is lost
    resumed = trainer(tiny_lm_dir, tmp_path, "b", **kw)
    assert resumed.step_no == 2 and [p["step"] for p in resumed.curve.points] == [0, 1, 2]
    resumed.train()
    assert resumed.curve.best == best and resumed.curve.summary()["kept_step"] == best["step"]
    assert resumed.curve.best_weights.keys() == whole.curve.best_weights.keys()
    assert all(torch.equal(resumed.curve.best_weights[k], v) for k, v in whole.curve.best_weights.items())
    # the restored weights answer the development prompts as the best point did
    model = resumed.acc.unwrap_model(resumed.model)
    resumed.curve.restore_best(model)
    again = resumed.samples.write(99, resumed)
    assert again["eval/gold"] == pytest.approx(best["gold"]) and again["eval/kl_k1"] == pytest.approx(best["kl_k1"])


def test_keep_last_keeps_no_weights_but_names_the_best_point(tiny_lm_dir, tmp_path):
    t = trainer(tiny_lm_dir, tmp_path, "a", total_episodes=16 * 2, sample_every=1)
    t.train()
    s = t.curve.summary()
    assert t.curve.best_weights is None and s["kept_step"] == 2 and s["best"]["step"] == t.curve.best["step"]
    assert s["keep"] == "last" and "last update" in s["kept_why"]


def test_early_stop_ends_the_run_and_a_resumed_run_stays_stopped(tiny_lm_dir, tmp_path):
    kw = dict(total_episodes=16 * 6, sample_every=1, save_every=10, early_stop_patience=1)
    t = trainer(tiny_lm_dir, tmp_path, "a", **kw)
    t.train()
    golds = [p["gold"] for p in t.curve.points]
    first_miss = next(i for i in range(1, len(golds)) if golds[i] <= max(golds[:i]))
    assert t.curve.stopped_at == first_miss == t.step_no < 6  # one evaluation without a better gold
    assert "stopped early at update" in t.curve.summary()["kept_why"]
    again = trainer(tiny_lm_dir, tmp_path, "a", **kw)  # the stop was checkpointed although save_every is 10
    assert again.step_no == first_miss and again.train() == again.history and again.step_no == first_miss


# ---------------------------------------------------------------- the stage
run_dir = test_ppo_stage.run_dir  # SFT and reward artifacts, training prompts, development prompts with gold


def test_the_stage_commits_the_kept_update_and_says_which_and_why(run_dir):
    assert main(argv(run_dir, "ppo.keep=best", "ppo.total_episodes=48")) == 0
    out = run_dir / "runs" / "t" / "ppo"
    curve = json.loads((out / "report.json").read_text())["curve"]
    assert [p["step"] for p in curve["points"]] == [0, 1, 2, 3] and curve["keep"] == "best"
    assert curve["kept_step"] == curve["best"]["step"] and "best development gold" in curve["kept_why"]
    assert set(curve["fits"]) == {"proxy", "gold"} and set(curve["fits"]["gold"]) == {"rl", "bon"}
    metrics = read_manifest(out)["metrics"]
    assert metrics["kept_step"] == curve["kept_step"] and metrics["last_step"] == 3
    assert metrics["kept_why"] == curve["kept_why"] and metrics["keep"] == "best"
    md = (out / "report.md").read_text()
    assert f"**Kept: update {curve['kept_step']}**" in md and "![proxy and gold against d](curve.png)" in md
    assert (out / "curve.png").stat().st_size > 0


def test_the_stage_refuses_keep_best_without_gold_answers_before_any_work(run_dir, capsys):
    (run_dir / "held.jsonl").write_text("".join(json.dumps({"prompt": f"Explain {i}"}) + "\n" for i in range(6)))
    with pytest.raises(SystemExit) as e:
        main(argv(run_dir, "ppo.keep=best"))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "ppo.keep=best" in err and "gold" in err and "ppo.keep=last" in err
    assert not (run_dir / "runs" / "t" / "ppo").exists()
