"""The embedded demo data: built from Python's own docs, deterministic, split by object so that
evaluation asks about objects the model read in pretraining but was never asked about."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from itertools import combinations
from pathlib import Path

import pytest

from data import demo
from data.demo import FILES, build_sets, demo_file, expand_ranking
from data.gold import gold_score
from data.loaders import iter_texts, load_pairs, load_prompts, load_rankings, load_sft
from pipeline.config.loader import load_config

ROOT = Path(__file__).resolve().parents[1]
QUESTION_SETS = ("sft_train.jsonl", "sft_val.jsonl", "rankings_train.jsonl", "rankings_heldout.jsonl",
                 "ppo_prompts.jsonl", "ppo_dev.jsonl", "eval_prompts.jsonl")


@pytest.fixture(scope="module")
def common():
    sets, stats = build_sets("common", k=4, seed=0)
    return sets, stats


def objects(records):
    return {r["object"] for r in records}


def prompts(records):
    out = set()
    for r in records:
        if "messages" in r:
            out.add(r["messages"][0]["content"])  # follow-ups ("What is its signature?") are generic
        else:
            out.add(r["prompt"])
    return out


def normalised(text):
    return " ".join(text.split())


def test_same_seed_gives_identical_sets_and_another_seed_other_splits(common):
    again, _ = build_sets("common", k=4, seed=0)
    assert again == common[0]
    other, _ = build_sets("common", k=4, seed=1)
    assert objects(other["eval_prompts.jsonl"]) != objects(common[0]["eval_prompts.jsonl"])
    assert other["pretrain_train.jsonl"] != common[0]["pretrain_train.jsonl"]  # other validation documents


def test_every_set_is_built_and_sized_for_the_tiny_preset(common):
    sets, stats = common
    assert set(sets) == set(FILES)
    for name in FILES:
        assert sets[name], f"{name} is empty"
    chars = sum(len(r["text"]) for r in sets["pretrain_train.jsonl"])
    assert 300_000 <= chars <= 1_500_000  # small enough to be read many times in minutes on a CPU
    assert stats["documents"] == len(sets["pretrain_train.jsonl"]) + len(sets["pretrain_val.jsonl"])
    assert len(sets["eval_prompts.jsonl"]) >= 128  # the tiny preset's eval.num_prompts


def test_question_sets_share_no_object_and_no_prompt(common):
    sets, _ = common
    for a, b in combinations(QUESTION_SETS, 2):
        assert not objects(sets[a]) & objects(sets[b]), f"{a} and {b} ask about the same object"
        assert not prompts(sets[a]) & prompts(sets[b]), f"{a} and {b} share a prompt"
    assert objects(sets["pairs_train.jsonl"]) == objects(sets["rankings_train.jsonl"])
    assert objects(sets["pairs_heldout.jsonl"]) == objects(sets["rankings_heldout.jsonl"])


def test_ppo_reports_on_a_development_split_no_stage_trains_on_and_evaluation_stays_the_test_set(common):
    sets, _ = common
    dev = objects(sets["ppo_dev.jsonl"])
    trained_on = (objects(sets["ppo_prompts.jsonl"]) | objects(sets["sft_train.jsonl"]) | objects(sets["sft_val.jsonl"])
                  | objects(sets["rankings_train.jsonl"]) | objects(sets["rankings_heldout.jsonl"]))
    assert dev and not dev & trained_on
    assert not dev & objects(sets["eval_prompts.jsonl"])  # tuning never looks at the test set
    assert all(r["gold"] for r in sets["ppo_dev.jsonl"]) and not any("gold" in r for r in sets["ppo_prompts.jsonl"])
    # Sized for the tiny preset: as many PPO training prompts as before the split, a dev set
    # large enough for an interval, every evaluation prompt kept.
    assert len(sets["ppo_prompts.jsonl"]) == 288 and len(sets["ppo_dev.jsonl"]) >= 128
    assert len(sets["eval_prompts.jsonl"]) == 286


def test_every_asked_object_was_read_in_pretraining_and_validation_documents_are_never_asked(common):
    sets, _ = common
    train_docs = {r["object"]: r["text"] for r in sets["pretrain_train.jsonl"]}
    val_objects = objects(sets["pretrain_val.jsonl"])
    assert not val_objects & set(train_docs)
    val_texts = {r["text"] for r in sets["pretrain_val.jsonl"]}
    assert not val_texts & {r["text"] for r in sets["pretrain_train.jsonl"]}
    for name in QUESTION_SETS:
        asked = objects(sets[name])
        assert asked <= set(train_docs), f"{name} asks about objects missing from pretraining"
        assert not asked & val_objects
    for r in sets["eval_prompts.jsonl"] + sets["ppo_dev.jsonl"]:
        doc = normalised(train_docs[r["object"]])
        assert r["object"] in doc.split("\n")[0] or doc.startswith(("class " + r["object"], r["object"]))
        assert normalised(r["gold"]).removesuffix("...")[:40] in doc  # the answer is the doc's summary


def test_answers_are_short(common):
    sets, stats = common
    golds = [r["gold"] for r in sets["eval_prompts.jsonl"] + sets["ppo_dev.jsonl"]]
    assert max(len(g.split()) for g in golds) <= 40
    assert stats["answers_shortened"] > 0  # some docstring summaries are long and were cut
    for r in sets["sft_train.jsonl"]:
        assert [m["role"] for m in r["messages"]][::2] == ["user"] * ((len(r["messages"]) + 1) // 2)
        assert r["messages"][-1]["role"] == "assistant"


def test_rankings_expand_to_all_pairs_with_the_better_answer_chosen(common):
    sets, _ = common
    for part in ("train", "heldout"):
        rankings = sets[f"rankings_{part}.jsonl"]
        pairs = sets[f"pairs_{part}.jsonl"]
        assert len(pairs) == len(rankings) * 4 * 3 // 2
        assert pairs == [p for r in rankings for p in expand_ranking(r)]
        for r in rankings:
            assert sorted(r["ranking"]) == list(range(4)) and len(set(r["responses"])) == 4
    ranks = [r["ranking"][0] for r in sets["rankings_train.jsonl"]]
    assert len(set(ranks)) == 4  # the best answer is not always shown in the same position


def test_best_ranked_answer_is_the_documented_summary_and_heldout_answers_stay_unseen(common):
    sets, _ = common
    docs = {r["object"]: normalised(r["text"]) for r in sets["pretrain_train.jsonl"]}
    for r in sets["rankings_train.jsonl"][:50]:
        best = r["responses"][r["ranking"][0]]
        assert normalised(best)[:40] in docs[r["object"]]
    heldout_answers = {r["responses"][r["ranking"][0]] for r in sets["rankings_heldout.jsonl"]}
    train_responses = {a for r in sets["rankings_train.jsonl"] for a in r["responses"]}
    assert not heldout_answers & train_responses
    eval_golds = {r["gold"] for r in sets["eval_prompts.jsonl"] + sets["ppo_dev.jsonl"]}
    assert not eval_golds & train_responses


def test_gold_metric_agrees_with_the_constructed_ranking_and_unrelated_golds_score_near_zero(common):
    sets, _ = common
    by_position = [[] for _ in range(4)]
    for r in sets["rankings_heldout.jsonl"]:
        best = r["responses"][r["ranking"][0]]
        for position, i in enumerate(r["ranking"]):
            by_position[position].append(gold_score(r["responses"][i], best))
    means = [sum(v) / len(v) for v in by_position]
    assert means == sorted(means, reverse=True) and means[0] == 1.0 and means[-1] < 0.1
    golds = [r["gold"] for r in sets["eval_prompts.jsonl"]]
    unrelated = [gold_score(a, b) for a, b in zip(golds, golds[7:] + golds[:7]) if a != b]
    assert sum(unrelated) / len(unrelated) < 0.1


@pytest.mark.parametrize("k", [2, 3, 5, 6])
def test_k_candidates_give_k_choose_2_pairs(k):
    sets, _ = build_sets("common", k=k, seed=0)
    r = sets["rankings_train.jsonl"][0]
    assert len(r["responses"]) == k and len(set(r["responses"])) == k
    assert len(sets["pairs_train.jsonl"]) == len(sets["rankings_train.jsonl"]) * k * (k - 1) // 2


def test_demo_file_builds_once_rebuilds_on_a_config_change_and_loads_everywhere(tmp_path):
    cfg = load_config("configs/test.yaml", [f"data.dir={tmp_path / 'data'}"])
    path = demo_file(cfg, "eval_prompts.jsonl")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert manifest["config"]["subset"] == "common" and manifest["config"]["python"]
    assert manifest["metrics"]["counts"]["eval_prompts.jsonl"] == len(path.read_text().splitlines())
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == sorted(FILES + ("manifest.json",))
    assert not (tmp_path / "data.partial").exists()
    created = manifest["created"], path.stat().st_mtime_ns
    demo_file(cfg, "sft_train.jsonl")
    assert (json.loads((tmp_path / "data" / "manifest.json").read_text())["created"],
            path.stat().st_mtime_ns) == created  # up to date: not rebuilt

    cfg3 = load_config("configs/test.yaml", [f"data.dir={tmp_path / 'data'}", "data.k=3"])
    rankings = load_rankings(str(demo_file(cfg3, "rankings_train.jsonl")))
    assert {len(r["responses"]) for r in rankings} == {3}

    d = tmp_path / "data"
    assert len(load_sft(str(d / "sft_train.jsonl"))) == manifest["metrics"]["counts"]["sft_train.jsonl"]
    assert len(load_pairs(str(d / "pairs_heldout.jsonl"))) == 3 * len(load_rankings(str(d / "rankings_heldout.jsonl")))
    assert all(p["gold"] for p in load_prompts(str(d / "eval_prompts.jsonl")))
    assert all(p["gold"] is None for p in load_prompts(str(d / "ppo_prompts.jsonl")))
    assert sum(1 for _ in iter_texts([str(d / "pretrain_val.jsonl")])) == manifest["metrics"]["counts"][
        "pretrain_val.jsonl"]
    assert demo_file(cfg, "pretrain_val") == d / "pretrain_val.jsonl"  # the stem names the same set
    with pytest.raises(Exception, match="not a demo set"):
        demo_file(cfg, "train.jsonl")


def test_processes_starting_together_build_the_demo_once(tmp_path):
    cfg = load_config("configs/test.yaml", [f"data.dir={tmp_path / 'data'}"])
    with ThreadPoolExecutor(2) as pool:  # like two DDP ranks on a fresh machine
        paths = list(pool.map(lambda name: demo_file(cfg, name), ["sft_train", "eval_prompts"]))
    assert all(p.is_file() for p in paths)
    assert not (tmp_path / "data.partial").exists()


def test_command_line_builds_identical_files_in_any_process_and_rejects_a_bad_k(tmp_path, capsys):
    demo.main(["--config", "configs/test.yaml", f"data.dir={tmp_path / 'd'}"])
    assert "pretrain_train.jsonl" in capsys.readouterr().err
    # Another interpreter with another hash seed: no set order or memory address may leak in.
    env = {**os.environ, "PYTHONHASHSEED": "123", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "data.demo", "--config", "configs/test.yaml",
                    f"data.dir={tmp_path / 'p'}"], check=True, env=env, capture_output=True, cwd=ROOT)
    fingerprints = [json.loads((tmp_path / d / "manifest.json").read_text())["fingerprint"] for d in "dp"]
    assert fingerprints[0] == fingerprints[1]
    with pytest.raises(SystemExit) as exit_:
        demo.main(["--config", "configs/test.yaml", f"data.dir={tmp_path / 'e'}", "data.k=9"])
    assert exit_.value.code == 2
    assert "data.k=9" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
