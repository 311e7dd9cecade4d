"""A round takes its rankings from feedback (rank.feedback_from_round=N): round N's rank artifact is what
people ranked in `make serve` / `make chat` of the model that round starts from (round N-1's PPO model),
read from the run's feedback store -- rankings of other models' answers left out, the store's held-out
conversations kept out of training, too few rankings one clear line -- and the store is a declared input,
so new feedback makes the round stale. `make ppo run.rounds=2 rank.feedback_from_round=2` runs round 2
from it and leaves round 1 as it was. The store is written by the test; nothing is sampled, so no model runs."""

import json
import shutil

import pytest
from stage_fixtures import fake_artifact

from data.feedback import (
    HELDOUT_MIN_RANKINGS,
    FeedbackStore,
    is_heldout,
    model_fingerprint,
    ranking_record,
    rating_record,
)
from stages.rank.feedback import MIN_RANKINGS


def ask(n: int) -> list[dict]:
    return [{"role": "user", "content": f"What does function number {n} do?"}]


def answers(fingerprint: str, *texts: str, model: str = "ppo") -> list[dict]:
    return [{"text": t, "completion": f"chatcmpl-{t}", "index": 0, "model": model, "model_fingerprint": fingerprint}
            for t in texts]


@pytest.fixture
def run(tiny_lm_dir, tmp_path):
    """runs/t/sft and runs/t/ppo (round 1's PPO model, the one round 2 starts from), and the run's store."""
    for stage in ("sft", "ppo"):
        def build(out, stage=stage):
            shutil.copytree(tiny_lm_dir, out, dirs_exist_ok=True)
            (out / "trained_by.txt").write_text(stage)  # two different models, two fingerprints

        fake_artifact(tmp_path, stage, build)
    root = tmp_path / "runs" / "t"
    argv = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path / 'runs'}", "run.name=t", "run.round=2",
            "rank.feedback_from_round=2"]
    return root, FeedbackStore(root / "feedback"), argv


def jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_round_two_ranks_from_the_store_what_people_said_of_round_ones_ppo_answers(run, capsys):
    from pipeline.chain.table import is_up_to_date
    from pipeline.config.cli import stage_config
    from stages.rank.stage import main

    root, store, argv = run
    ppo, sft = model_fingerprint(root / "ppo"), model_fingerprint(root / "sft")
    n = HELDOUT_MIN_RANKINGS  # enough for the store's held-out fifth
    for i in range(n):
        store.append(ranking_record(ask(i), answers(ppo, f"p{i}a", f"p{i}b", f"p{i}c"), [[1], [0], [2]],
                                    labeler="ada@serve"))
    store.append(ranking_record(ask(0), answers(ppo, "p0a", "p0b", "p0c"), [[1], [2], [0]], labeler="bob@serve"))
    for i in range(3):  # the SFT model's answers: another model, left out
        store.append(ranking_record(ask(i), answers(sft, f"s{i}a", f"s{i}b", model="sft"), [[0], [1]],
                                    labeler="ada@serve"))
    mixed = answers(ppo, "p1a") + answers(sft, "s1x", model="sft")  # two models compared: not all the policy's
    store.append(ranking_record(ask(1), mixed, [[0], [1]], labeler="ada@serve"))
    store.append(ranking_record(ask(99), answers(ppo, "t1", "t2"), [[0, 1]], labeler="ada@serve"))  # all tied
    store.append(rating_record(ask(98), answers(ppo, "r1")[0], True, labeler="ada@chat"))

    assert main(argv) == 0
    out = root / "rank-r2"
    ranked, held = jsonl(out / "rankings.jsonl"), jsonl(out / "heldout_rankings.jsonl")
    assert len(ranked) + len(held) == n + 1 and 0 < len(held) < n / 2
    assert all(r["responses"][0].startswith("p") for r in ranked + held)  # only PPO's answers
    assert not any(is_heldout(r["prompt_id"]) for r in ranked) and all(is_heldout(r["prompt_id"]) for r in held)
    ada = next(r for r in ranked + held if r["prompt"] == ask(5))
    assert ada["responses"] == ["p5a", "p5b", "p5c"] and ada["ranking"] == [1, 0, 2] and ada["labeler"] == "ada@serve"
    assert len(jsonl(out / "candidates.jsonl")) == len({r["prompt_id"] for r in ranked})
    report = json.loads((out / "report.json").read_text())
    assert report["feedback"]["other_models"] == 4 and report["feedback"]["all_tied"] == 1
    assert report["agreement"]["people"]["pair_agreement"] == pytest.approx(2 / 3)  # ada and bob on ask(0)
    assert "from feedback" in (out / "report.md").read_text()
    assert "up to date" not in capsys.readouterr().out

    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    store.append(ranking_record(ask(200), answers(ppo, "n1", "n2"), [[0], [1]], labeler="ada@serve"))
    assert not is_up_to_date(stage_config("rank", argv[:]), "rank", say=False)  # new feedback: round 2 is stale


def test_the_rounds_reward_model_trains_on_those_rankings_and_round_one_stays_current(run):
    from pipeline.chain.table import key
    from pipeline.config.loader import load_config
    from stages.rank.stage import main
    from stages.reward.dataset import load_training_pairs, training_sources

    root, store, argv = run
    ppo = model_fingerprint(root / "ppo")
    for i in range(MIN_RANKINGS):
        store.append(ranking_record(ask(i), answers(ppo, f"good {i}", f"bad {i}"), [[0], [1]], labeler="ada@serve"))
    assert main(argv) == 0
    fake_artifact(root.parent.parent, "rank", lambda out: (out / "rankings.jsonl").write_text(""))  # round 1's

    base = [f"run.out_dir={root.parent}", "run.name=t", "reward.data=rank"]
    round_two = load_config("configs/test.yaml", base + ["run.round=2", "rank.feedback_from_round=2"])
    sources = training_sources(round_two)
    assert sources == [str(root / "rank" / "rankings.jsonl"), str(root / "rank-r2" / "rankings.jsonl")]
    pairs = load_training_pairs(sources)
    assert len(pairs) == MIN_RANKINGS
    assert all("good" in json.dumps(p["chosen"]) and "bad" in json.dumps(p["rejected"]) for p in pairs)
    # the key names no round: round 1 keeps its labeler, so `make ppo run.rounds=2 ...` leaves it current
    round_one = [load_config("configs/test.yaml", base + extra) for extra in ([], ["rank.feedback_from_round=2"])]
    assert key(round_one[0], "rank") == key(round_one[1], "rank")


def test_too_few_rankings_of_the_policys_answers_is_one_line_and_no_artifact(run, capsys):
    from stages.rank.stage import main

    root, store, argv = run
    ppo, sft = model_fingerprint(root / "ppo"), model_fingerprint(root / "sft")
    for i in range(MIN_RANKINGS - 1):
        store.append(ranking_record(ask(i), answers(ppo, f"a{i}", f"b{i}"), [[0], [1]], labeler="ada@serve"))
    for i in range(5):  # plenty of the SFT model's: they do not count
        store.append(ranking_record(ask(i), answers(sft, f"c{i}", f"d{i}", model="sft"), [[0], [1]],
                                    labeler="ada@serve"))
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{MIN_RANKINGS - 1} rankings of {root / 'ppo'}'s answers to train on, fewer than {MIN_RANKINGS}" in err
    assert "5 of other models' answers" in err and "make serve MODEL=" in err
    assert not list(root.glob("rank-r2*"))  # nothing half-written, no lock left


def test_make_ppo_with_two_rounds_runs_round_two_from_feedback():
    from test_make_plan import make

    proc = make("ppo", "run.rounds=2", "rank.feedback_from_round=2")
    assert proc.returncode == 0, proc.stderr
    ranks = [line for line in proc.stdout.splitlines() if "-m stages.rank" in line]
    assert len(ranks) == 2 and "run.round=2" in ranks[1] and "rank.feedback_from_round=2" in ranks[1]
