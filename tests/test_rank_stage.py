"""The rank stage on a tiny real model: candidates sampled with the project's loop (deterministic,
resumable by chunk, log-probabilities that are the policy's), the judge labeler with a tiny real
reward model and causal LM, and the stage's artifact end to end."""

import json
import re

import pytest
import torch

from pipeline.errors import UserError

GOLD = "Return the number of items in a container."


@pytest.fixture(scope="module")
def lm(tiny_lm_dir):
    from transformers import AutoTokenizer

    from pipeline.lm.model import load_causal_lm

    return load_causal_lm(str(tiny_lm_dir), dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(tiny_lm_dir)


def _prompts(n):
    return [{"prompt_id": f"p{i:06d}", "prompt": f"What does function number {i} do?",
             "messages": [{"role": "user", "content": f"What does function number {i} do?"}],
             "gold": GOLD, "object": f"mod.f{i}"} for i in range(n)]


def _sample(lm, directory, prompts, **kw):
    from stages.rank.candidates import generate_candidates

    model, tok = lm
    args = dict(kind="candidates", directory=directory, k=4, temperatures=[0.7, 1.3], max_new_tokens=6,
                batch_size=4, chunk_prompts=3, seed=5, policy="tiny")
    return generate_candidates(model, tok, prompts, **{**args, **kw})


def test_candidates_are_deterministic_and_a_killed_run_resumes_at_the_missing_chunk(lm, tmp_path):
    prompts = _prompts(7)
    (tmp_path / "a").mkdir()
    first = _sample(lm, tmp_path / "a", prompts)
    chunks = sorted((tmp_path / "a").glob("candidates-*.jsonl"))
    assert len(chunks) == 3  # 3 + 3 + 1 prompts
    (tmp_path / "b").mkdir()
    assert _sample(lm, tmp_path / "b", prompts) == first  # same seed, same answers
    kept = chunks[0].stat().st_mtime_ns
    chunks[-1].unlink()  # as if killed while sampling the last chunk
    assert _sample(lm, tmp_path / "a", prompts) == first
    assert chunks[0].stat().st_mtime_ns == kept, "a finished chunk was sampled again"
    rec = first[0]
    assert rec["prompt_id"] == "p000000" and rec["gold"] == GOLD and rec["policy"] == "tiny"
    assert len(set(rec["responses"])) == len(rec["responses"]) <= 4
    assert set(rec["temperatures"]) <= {0.7, 1.3} and rec["temperatures"][0] == 0.7


def test_logprobs_are_the_policys_own_and_identical_answers_merge(lm):
    from pipeline.lm.generation import answer_logprobs, generate
    from stages.rank.candidates import AnswerLogprob, merge_answers

    model, tok = lm
    prompts = [tok.apply_chat_template(p["messages"], tokenize=True, return_dict=True,
                                       add_generation_prompt=True)["input_ids"] for p in _prompts(3)]
    prompts.append(prompts[0] + prompts[1])  # a longer prompt: the others are left-padded beside it
    # Every 8th token id ends an answer here, so that within 6 tokens some answers end (EOS counted,
    # nothing after it) and others are cut at the limit; the random model rarely says its real EOS.
    eos_ids = set(range(3, len(tok), 8))
    checked = {"ended": 0, "cut": 0}
    for temperature in (0.7, 1.3):  # sampled at any temperature, the log-prob is the policy's own (temperature 1)
        logprob = AnswerLogprob(eos_ids)  # the rank stage's on_step
        answers = generate(model, prompts, max_new_tokens=6, eos_ids=eos_ids, pad_id=tok.pad_token_id,
                           temperature=temperature, generator=torch.Generator().manual_seed(9), on_step=logprob)
        teacher_forced = answer_logprobs(model, prompts, answers, pad_id=tok.pad_token_id, temperature=1.0)
        for answer, total, token_lps in zip(answers, logprob.total.tolist(), teacher_forced):
            assert total == pytest.approx(sum(token_lps), abs=1e-4)
            checked["ended" if answer[-1] in eos_ids else "cut"] += 1
    assert checked["ended"] > 0 and checked["cut"] > 0, checked  # both kinds of answer were recomputed
    merged = merge_answers(_prompts(1)[0], [("same", 0.7, -1.0), ("same", 1.3, -2.0), ("other", 1.3, -3.0)], "t")
    assert merged["responses"] == ["same", "other"] and merged["temperatures"] == [0.7, 1.3]
    assert merged["logprobs"] == [-1.0, -3.0] and "skipped" not in merged
    alone = merge_answers(_prompts(1)[0], [("same", 0.7, -1.0), ("same", 1.3, -2.0)], "t")
    assert alone["skipped"] is True


@pytest.fixture(scope="module")
def tiny_reward_dir(tiny_lm_dir, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(3)
    out = tmp_path_factory.mktemp("tiny_rm")
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    rm.config.pad_token_id = tok.pad_token_id
    torch.nn.init.normal_(rm.score.weight, std=1.0)  # a head that separates answers
    rm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_a_reward_model_judge_ranks_by_its_scores(tiny_reward_dir):
    from pipeline.judge.scoring import load_reward_model, score_conversations
    from stages.rank.judge import Judge
    from stages.rank.stage import label_judge

    rec = {"prompt_id": "p1", "prompt": "What does len do?", "gold": GOLD,
           "responses": ["Return the length.", "A web server.", "Spam spam spam.", "Return the number of items."]}
    judge = Judge(str(tiny_reward_dir), torch.device("cpu"))
    assert judge.kind == "reward"
    model, tok, _ = load_reward_model(tiny_reward_dir)
    expected = score_conversations(model, tok, [[{"role": "user", "content": rec["prompt"]}]] * 4, rec["responses"])
    assert judge.scores(rec) == pytest.approx(expected.tolist(), abs=1e-5)
    rankings, ag, extra = label_judge([rec], str(tiny_reward_dir), torch.device("cpu"))
    order = [i for tier in rankings[0]["groups"] for i in tier]
    assert order == sorted(range(4), key=lambda i: -expected[i].item())
    assert rankings[0]["labeler_kind"] == "judge" and extra["judge_kind"] == "reward" and ag["pairs"] == 5  # two answers tie on gold


def test_a_causal_lm_judge_scores_the_mean_logprob_of_each_answer_after_the_reference(tiny_lm_dir, lm):
    from pipeline.lm.generation import answer_logprobs
    from stages.rank.judge import Judge, reference_prompt

    rec = {"prompt_id": "p1", "prompt": "What does len do?", "gold": GOLD, "responses": ["Return it.", "No."]}
    judge = Judge(str(tiny_lm_dir), torch.device("cpu"))
    assert judge.kind == "lm"
    assert reference_prompt(rec)[-1]["content"].endswith(f"Reference answer: {GOLD}")
    model, tok = lm
    ctx = tok.apply_chat_template(reference_prompt(rec), tokenize=True, return_dict=True,
                                  add_generation_prompt=True)["input_ids"]
    for text, score in zip(rec["responses"], judge.scores(rec)):
        full = tok.apply_chat_template(reference_prompt(rec) + [{"role": "assistant", "content": text}],
                                       tokenize=True, return_dict=True)["input_ids"]
        lp = answer_logprobs(model, [ctx], [full[len(ctx):]], pad_id=tok.pad_token_id, temperature=0)[0]
        assert score == pytest.approx(sum(lp) / len(lp), abs=1e-4)


def test_a_judge_that_is_no_model_is_one_clear_error(tmp_path):
    from stages.rank.judge import judge_kind

    with pytest.raises(UserError, match="not a model directory"):
        judge_kind(str(tmp_path))


def _write_prompts(path, n, gold=True):
    path.write_text("".join(json.dumps({"prompt": f"What does f{i} do?", **({"gold": GOLD} if gold else {}),
                                        "object": f"m.f{i}"}) + "\n" for i in range(n)))
    return path


def test_the_stage_writes_its_artifact_and_a_rerun_is_up_to_date(tiny_lm_dir, tmp_path, capsys):
    from stages.rank.stage import main

    prompts, held = _write_prompts(tmp_path / "p.jsonl", 5), _write_prompts(tmp_path / "h.jsonl", 3)
    argv = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", "run.name=t", f"rank.policy={tiny_lm_dir}",
            f"rank.prompts={prompts}", f"rank.heldout_prompts={held}", "run.round=1", "rank.noise=0",
            "rank.chunk_prompts=2", "rank.max_new_tokens=6"]
    assert main(argv) == 0
    out = tmp_path / "t" / "rank"
    for name in ("candidates.jsonl", "rankings.jsonl", "heldout_candidates.jsonl", "heldout_rankings.jsonl",
                 "report.md", "report.json", "manifest.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    assert report["prompts"] == 5 and report["skipped"] + len((out / "candidates.jsonl").read_text().splitlines()) == 5
    assert report["ranked"] + report["all_tied"] + report["skipped"] == 5
    if report["ranked"]:
        assert report["agreement"]["kendall_tau"] == 1.0  # noise 0: the gold order itself
    assert "Gold score by rank position" in (out / "report.md").read_text() or not report["ranked"]
    assert not (tmp_path / "t" / "rank.partial").exists()
    capsys.readouterr()
    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out
    answers = (out / "candidates.jsonl").read_text()
    assert main(argv + ["rank.noise=5"]) == 0  # another labeling of the same answers
    assert "reusing the answers" in capsys.readouterr().out
    assert (out / "candidates.jsonl").read_text() == answers
    assert json.loads((out / "report.json").read_text())["noise"] == 5


def test_the_gold_labeler_without_gold_answers_is_one_clear_error(tiny_lm_dir, tmp_path):
    from stages.rank.stage import main

    prompts = _write_prompts(tmp_path / "p.jsonl", 3, gold=False)
    with pytest.raises(SystemExit) as e:
        main(["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", "run.name=t", f"rank.policy={tiny_lm_dir}",
              f"rank.prompts={prompts}", "rank.heldout_prompts=none"])
    assert e.value.code != 0
    assert not (tmp_path / "t" / "rank.partial").exists()


def test_a_person_who_stops_early_is_asked_again_and_every_label_is_kept(tiny_lm_dir, tmp_path, monkeypatch):
    """The stage's side of the labeling page's contract (CONTRACTS.md): it names the labels file, reads
    the latest label per prompt back, commits what is ranked, and reopens the page while prompts remain.
    The page itself is stood in for by a function that appends labels as the page does."""
    import sys
    import types

    from stages.rank.stage import main

    calls = []

    def label(candidates, labels_path, *, labeler, seed=0, **kw):
        done = {json.loads(line)["prompt_id"] for line in labels_path.read_text().splitlines()} \
            if labels_path.exists() else set()
        todo = [c for c in candidates if c["prompt_id"] not in done][:2]  # the person stops after two
        with open(labels_path, "a") as f:
            for c in todo:
                f.write(json.dumps({"prompt_id": c["prompt_id"], "prompt": c["prompt"], "responses": c["responses"],
                                    "ranking": list(range(len(c["responses"])))[::-1], "labeler": labeler,
                                    "labeler_kind": "human", "time": "2026-11-29T18:00:00Z"}) + "\n")
        calls.append(labels_path)
        return {"ranked": len(done) + len(todo), "remaining": len(candidates) - len(done) - len(todo)}

    fake = types.ModuleType("stages.rank.human")
    fake.label_in_terminal = label
    monkeypatch.setitem(sys.modules, "stages.rank.human", fake)
    monkeypatch.setattr("stages.rank.human", fake, raising=False)
    prompts = _write_prompts(tmp_path / "p.jsonl", 3, gold=False)
    argv = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path}", "run.name=t", f"rank.policy={tiny_lm_dir}",
            f"rank.prompts={prompts}", "rank.heldout_prompts=none", "run.round=1", "rank.labeler=human",
            "rank.ui=terminal", "rank.labeler_name=alice", "rank.max_new_tokens=6"]
    assert main(argv) == 0
    out = tmp_path / "t" / "rank"
    assert calls == [tmp_path / "t" / "labels" / "alice.jsonl"]
    assert json.loads((out / "manifest.json").read_text())["metrics"]["remaining"] >= 1
    assert main(argv) == 0  # not "up to date": the page opens again for what is left
    assert len(calls) == 2
    rankings = [json.loads(line) for line in (out / "rankings.jsonl").read_text().splitlines()]
    cands = (out / "candidates.jsonl").read_text().splitlines()
    assert len(rankings) == len(cands) and {r["labeler"] for r in rankings} == {"alice"}
    assert all(r["labeler_kind"] == "human" and r["time"] == "2026-11-29T18:00:00Z" for r in rankings)
    assert json.loads((out / "manifest.json").read_text())["metrics"]["remaining"] == 0
    assert main(argv) == 0 and len(calls) == 2  # everything ranked: up to date


def test_a_second_round_has_its_own_artifact_and_the_reward_stage_names_both_rounds(tmp_path):
    from pipeline.artifacts.store import ArtifactWriter
    from pipeline.config.loader import load_config
    from pipeline.graph.rounds import current_round, round_dir
    from stages.rank.stage import default_policy
    from stages.reward.dataset import data_parts, training_sources

    base = ["run.name=t", f"run.out_dir={tmp_path}"]
    run = tmp_path / "t"
    first = load_config("configs/test.yaml", base)
    assert round_dir(first, "rank", current_round(first)) == run / "rank" and default_policy(first, 1)[0] == run / "sft"
    second = load_config("configs/test.yaml", base + ["rank.policy=runs/t/ppo"])  # another model's answers
    assert round_dir(second, "rank", current_round(second)) == run / "rank-r2"
    third = load_config("configs/test.yaml", base + ["run.round=3"])
    assert round_dir(third, "rank", current_round(third)) == run / "rank-r3"
    assert default_policy(third, 3)[0] == run / "ppo-r2" and default_policy(third, 2)[0] == run / "ppo"
    assert round_dir(third, "reward") == run / "reward-r3" and round_dir(third, "ppo") == run / "ppo-r3"
    assert data_parts(third) == ["demo", "rank", "rank-r2", "rank-r3"]  # every round's rankings so far
    with pytest.raises(UserError, match="include rank"):
        data_parts(load_config("configs/test.yaml", base + ["run.round=2", "reward.data=extra.jsonl"]))

    cfg = load_config("configs/test.yaml", base + ["reward.data=rank+rank-r2+extra.jsonl"])
    for name, missing in (("rank", "make rank` first"), ("rank-r2", "make rank run.round=2")):
        with pytest.raises(UserError, match=missing):
            training_sources(cfg)
        w = ArtifactWriter(run / name, "rank")
        (w.out_dir / "rankings.jsonl").write_text("")
        w.commit(config={})
    assert training_sources(cfg) == [str(run / "rank" / "rankings.jsonl"),
                                     str(run / "rank-r2" / "rankings.jsonl"), "extra.jsonl"]


@pytest.mark.parametrize("overrides, key", [
    (["run.rounds=2", "reward.data=demo"], "reward.data='demo' names no ranking"),
    (["run.rounds=2", "ppo.reward_model=other/rm"], "ppo.reward_model=other/rm would be used again"),
    (["run.rounds=3", "rank.policy=other/model"], "rank.policy=other/model would be used again"),
    (["run.rounds=0"], "run.rounds=0: must be >= 1"),
])
def test_settings_that_later_rounds_cannot_run_with_are_refused_when_the_config_is_read(overrides, key):
    from pipeline.config.loader import load_config

    with pytest.raises(UserError, match=re.escape(key)):
        load_config("configs/test.yaml", overrides)


def test_ranking_another_models_answers_is_round_two_so_two_rounds_repeat_nothing():
    from pipeline.config.loader import load_config

    assert load_config("configs/test.yaml", ["run.rounds=2", "rank.policy=other/model"]).run.rounds == 2
