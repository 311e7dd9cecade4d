"""The public data layouts (Anthropic HH, UltraFeedback, TL;DR, messages) work in every stage they
fit: SFT learns the chosen conversation, prompt readers (PPO, rank, evaluation, the reward
statistics) take the conversation up to the last assistant turn with that turn as the reference
answer, and preference readers take the pairs. Records a stage cannot use are counted with their
reason. All offline: local JSONL files and a dataset saved with `datasets.save_to_disk`."""

import json
import logging

import pytest

from data.loaders import load_pairs, load_prompts, load_sft
from pipeline.config.loader import load_config
from pipeline.errors import UserError

ROOT_CONFIG = "configs/test.yaml"
HH = [  # two-turn, one-turn, and one whose chosen answer is empty (SFT has nothing to learn from it)
    {"chosen": "\n\nHuman: What does len do?\n\nAssistant: It counts items.\n\nHuman: Of a dict?"
               "\n\nAssistant: Its keys.",
     "rejected": "\n\nHuman: What does len do?\n\nAssistant: It counts items.\n\nHuman: Of a dict?"
                 "\n\nAssistant: No idea."},
    {"chosen": "\n\nHuman: What does zip do?\n\nAssistant: Pairs items of iterables.",
     "rejected": "\n\nHuman: What does zip do?\n\nAssistant: Compresses files."},
    {"chosen": "\n\nHuman: Say nothing.\n\nAssistant:", "rejected": "\n\nHuman: Say nothing.\n\nAssistant: Hi."},
]


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


UF = [  # HuggingFaceH4/ultrafeedback_binarized's columns
    {"prompt": "Name a prime.", "prompt_id": "a1",
     "chosen": [user("Name a prime."), assistant("Seven.")], "rejected": [user("Name a prime."), assistant("Nine.")],
     "messages": [user("Name a prime."), assistant("Seven.")], "score_chosen": 9.0, "score_rejected": 2.5},
    {"prompt": "Name a colour.", "prompt_id": "a2",
     "chosen": [user("Name a colour."), assistant("Red.")], "rejected": [user("Name a colour."), assistant("Red.")],
     "messages": [user("Name a colour."), assistant("Red.")], "score_chosen": 5.0, "score_rejected": 5.0},
]
TLDR_SFT = [{"prompt": "POST: My cat ignores me.\nTL;DR:", "completion": " Cat is aloof."}]
TLDR_PAIRS = [{"prompt": "POST: My cat ignores me.\nTL;DR:", "chosen": " Cat is aloof.", "rejected": " Cats."}]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return {name: write_jsonl(tmp_path / f"{name}.jsonl", records) for name, records in
            [("hh", HH), ("uf", UF), ("tldr_sft", TLDR_SFT), ("tldr_pairs", TLDR_PAIRS),
             ("uf_lists", [{k: r[k] for k in ("chosen", "rejected")} for r in UF])]}


# --- Anthropic HH transcripts --------------------------------------------------------------------

def test_hh_as_sft_data_is_the_chosen_conversation_and_an_empty_answer_is_counted(files, caplog):
    with caplog.at_level(logging.WARNING, logger="data.loaders"):
        out = load_sft(files["hh"])
    assert out[0]["messages"] == [user("What does len do?"), assistant("It counts items."), user("Of a dict?"),
                                  assistant("Its keys.")]
    assert out[1]["messages"] == [user("What does zip do?"), assistant("Pairs items of iterables.")]
    assert len(out) == 2
    assert "dropped 1 of 3 SFT records (1 empty chosen answer)" in caplog.text


def test_hh_as_prompts_is_the_conversation_up_to_the_last_assistant_turn_with_it_as_gold(files):
    out = load_prompts(files["hh"])
    assert out[0] == {"prompt": [user("What does len do?"), assistant("It counts items."), user("Of a dict?")],
                      "gold": "Its keys."}
    assert out[1] == {"prompt": [user("What does zip do?")], "gold": "Pairs items of iterables."}
    assert out[2] == {"prompt": [user("Say nothing.")], "gold": None}  # an empty answer is no reference


def test_hh_as_preference_pairs_splits_off_the_shared_conversation(files):
    pairs = load_pairs(files["hh"])
    assert pairs[0]["prompt"][-1] == user("Of a dict?") and len(pairs[0]["prompt"]) == 3
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == ([assistant("Its keys.")], [assistant("No idea.")])


def test_a_transcript_without_a_user_turn_before_its_answer_is_dropped_and_counted(tmp_path, caplog):
    path = write_jsonl(tmp_path / "odd.jsonl", HH[:1] + [
        {"chosen": "\n\nAssistant: Hello.\n\nAssistant: Again.", "rejected": "\n\nAssistant: Hi."}])
    with caplog.at_level(logging.WARNING, logger="data.loaders"):
        assert len(load_prompts(path)) == 1
    assert "dropped 1 of 2 prompt records (1 no user turn before the last assistant turn)" in caplog.text


# --- UltraFeedback ------------------------------------------------------------------------------

def test_ultrafeedback_rows_give_sft_conversations_pairs_with_score_margins_and_prompts(files, caplog):
    assert [r["messages"] for r in load_sft(files["uf"])] == [UF[0]["messages"], UF[1]["messages"]]
    with caplog.at_level(logging.WARNING, logger="data.loaders"):
        pairs = load_pairs(files["uf"])
    assert len(pairs) == 1 and pairs[0]["prompt"] == [user("Name a prime.")]
    assert (pairs[0]["chosen"], pairs[0]["margin"]) == ([assistant("Seven.")], 6.5)
    assert "1 chosen == rejected" in caplog.text
    assert load_prompts(files["uf"]) == [{"prompt": [user("Name a prime.")], "gold": "Seven."},
                                         {"prompt": [user("Name a colour.")], "gold": "Red."}]


def test_chosen_message_lists_without_a_prompt_column_work_in_every_reader(files):
    assert load_sft(files["uf_lists"])[0]["messages"] == UF[0]["chosen"]
    assert load_prompts(files["uf_lists"])[0] == {"prompt": [user("Name a prime.")], "gold": "Seven."}
    assert load_pairs(files["uf_lists"])[0]["rejected"] == [assistant("Nine.")]


# --- TL;DR ----------------------------------------------------------------------------------------

def test_tldr_prompt_completion_is_an_sft_conversation_and_a_prompt_with_its_reference(files):
    prompt = user("POST: My cat ignores me.\nTL;DR:")
    assert load_sft(files["tldr_sft"]) == [{"messages": [prompt, assistant(" Cat is aloof.")]}]
    assert load_prompts(files["tldr_sft"]) == [{"prompt": [prompt], "gold": "Cat is aloof."}]


def test_tldr_preference_rows_give_pairs_sft_from_prompt_and_chosen_and_prompts(files):
    prompt = user("POST: My cat ignores me.\nTL;DR:")
    pair = load_pairs(files["tldr_pairs"])[0]
    assert (pair["prompt"], pair["chosen"], pair["rejected"]) == ([prompt], [assistant(" Cat is aloof.")],
                                                                  [assistant(" Cats.")])
    assert load_sft(files["tldr_pairs"]) == [{"messages": [prompt, assistant(" Cat is aloof.")]}]
    assert load_prompts(files["tldr_pairs"]) == [{"prompt": [prompt], "gold": "Cat is aloof."}]


def test_a_record_of_no_known_layout_still_names_every_accepted_one(tmp_path):
    path = write_jsonl(tmp_path / "q.jsonl", [{"question": "x", "reply": "y"}])
    with pytest.raises(UserError, match=r"q.jsonl, line 1: no known SFT fields.*HH.*chosen"):
        load_sft(path)
    with pytest.raises(UserError, match=r"no known prompt fields.*HH"):
        load_prompts(path)


# --- hub-style splits of a saved dataset ---------------------------------------------------------------

def test_a_saved_dataset_dict_is_read_by_split_name_like_a_hub_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    folder = tmp_path / "ultrafeedback"
    cols = lambda rows: {k: [r[k] for r in rows] for k in ("prompt", "chosen", "rejected", "messages")}  # noqa: E731
    datasets.DatasetDict({"train_prefs": datasets.Dataset.from_dict(cols(UF[:1])),
                          "test_prefs": datasets.Dataset.from_dict(cols(UF[1:]))}).save_to_disk(str(folder))
    assert load_prompts(f"{folder}:test_prefs")[0]["gold"] == "Red."
    assert load_pairs(f"{folder}:train_prefs")[0]["chosen"] == [assistant("Seven.")]
    with pytest.raises(UserError, match="no split 'train'; it has train_prefs, test_prefs"):
        load_sft(f"{folder}:train")


def test_hub_names_keep_their_split_and_slice():
    from data.loaders import resolve
    from pipeline.artifacts.store import source_fingerprint

    for name in ("Anthropic/hh-rlhf", "Anthropic/hh-rlhf:test[:50%]", "HuggingFaceH4/ultrafeedback_binarized:train_prefs"):
        assert resolve(name) == name
        assert source_fingerprint(name) == f"hub:{name}"
    with pytest.raises(UserError, match="matches no file"):
        resolve("nowhere/*.jsonl")


# --- the stages' readers -------------------------------------------------------------------------

def test_every_stage_reads_hh_files_where_its_key_names_them(files, tmp_path):
    from data.report_prompts import report_prompts
    from stages.ppo.stage import load_prompt_sets
    from stages.rank.candidates import load_prompt_records
    from stages.sft.dataset import load_sft_splits

    cfg = load_config(ROOT_CONFIG, [f"run.out_dir={tmp_path}", f"sft.data={files['hh']}", f"sft.val_data={files['uf']}",
                                    f"ppo.data={files['hh']}", f"ppo.eval_data={files['tldr_pairs']}",
                                    f"eval.prompts={files['hh']}", "ppo.batch_size=2", "ppo.num_minibatches=1"])
    train, val, _ = load_sft_splits(cfg)
    assert len(train) == 2 and val[0]["messages"] == UF[0]["messages"]
    ppo_train, dev, golds, _ = load_prompt_sets(cfg)
    assert ppo_train[1] == [user("What does zip do?")] and golds == ["Cat is aloof."]
    assert report_prompts(cfg, "eval").golds[0] == "Its keys."
    ranked = load_prompt_records(files["hh"], "p", None)
    assert [r["gold"] for r in ranked] == ["Its keys.", "Pairs items of iterables.", None]
    assert ranked[0]["messages"][-1] == user("Of a dict?")
    assert not (tmp_path / "test" / "data").exists()  # no demo data was built for any of it


def test_hh_conversations_over_the_length_limit_are_counted_as_truncated_or_dropped(tmp_path, tiny_lm_dir):
    from pipeline.lm.tokenizer import load_tokenizer
    from stages.ppo.rollout import encode_prompts
    from stages.sft.dataset import screen

    tok, _ = load_tokenizer(str(tiny_lm_dir))
    long = {"chosen": "\n\nHuman: Tell me about len.\n\nAssistant: " + "It counts. " * 60,
            "rejected": "\n\nHuman: Tell me about len.\n\nAssistant: No."}
    wordy = {"chosen": "\n\nHuman: " + "Why? " * 80 + "\n\nAssistant: Because.", "rejected": "\n\nHuman: x\n\nAssistant: y"}
    path = write_jsonl(tmp_path / "long.jsonl", HH[1:2] + [long, wordy])
    s = screen(load_sft(path), tok, max_length=64)
    assert (len(s.records), s.truncated, s.dropped_too_long) == (2, 1, 1)
    ids, dropped = encode_prompts(tok, [p["prompt"] for p in load_prompts(path)], max_prompt_length=64)
    assert (len(ids), dropped) == (2, 1)


def test_the_reward_statistics_sample_answers_to_the_prompts_ppo_will_use(files, tmp_path, tiny_lm_dir):
    from transformers import AutoTokenizer

    from pipeline.chain.table import STAGES
    from pipeline.graph.declare import Artifact
    from stages.reward.statistics import encoded_prompts

    long = {"chosen": "\n\nHuman: " + "Why? " * 80 + "\n\nAssistant: Because.", "rejected": "\n\nHuman: x\n\nAssistant: y"}
    prompts = write_jsonl(tmp_path / "ppo_prompts.jsonl", [long] + HH)
    cfg = load_config(ROOT_CONFIG, [f"run.out_dir={tmp_path}", f"ppo.data={prompts}", "ppo.max_new_tokens=4",
                                    "ppo.max_prompt_length=64", "reward.stats_prompts=2"])
    texts, ids, too_long, source = encoded_prompts(cfg, AutoTokenizer.from_pretrained(tiny_lm_dir))
    # the first two prompts PPO would keep (it drops the one over ppo.max_prompt_length)
    assert (source, len(texts), len(ids), too_long) == (prompts, 2, 2, 1)
    assert not (tmp_path / "test" / "data").exists()  # the demo's prompts were not read
    # whose answers are scored: ppo.policy when given, else this run's SFT model
    policy = STAGES["reward-stats"].inputs(cfg)["policy"]
    assert policy == Artifact("sft", "ppo.policy")


def test_the_gold_labeler_ranks_the_hh_prompts_that_have_a_reference_and_counts_the_rest(files, capsys):
    from stages.rank.candidates import load_prompt_records, require_gold

    kept = require_gold(load_prompt_records(files["hh"], "p", None), files["hh"], "the simulated labeler")
    assert [r["prompt_id"] for r in kept] == ["p000000", "p000001"]
    assert "dropped 1 of 3 prompts" in capsys.readouterr().out
    with pytest.raises(UserError, match="none of 1 prompts has a \"gold\" answer"):
        require_gold(load_prompt_records(files["hh"], "p", None)[2:], files["hh"], "the simulated labeler")


def test_blank_prompts_are_dropped_and_counted(tmp_path, caplog):
    from data.loaders import load_prompts

    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "What is a list?"}\n{"prompt": "  \\n "}\n{"prompt": "Why sort?"}\n')
    with caplog.at_level("WARNING"):
        records = load_prompts(str(f))
    assert [r["prompt"][-1]["content"] for r in records] == ["What is a list?", "Why sort?"]
    assert "dropped 1 of 3" in caplog.text and "whitespace" in caplog.text
