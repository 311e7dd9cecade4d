"""Reward stage, the parts without training: encoding conversations, K-way held-out expansion,
metrics, dropping bad pairs, the prompt-grouped sampler."""

import pytest
import torch
from transformers import AutoTokenizer

from pipeline.errors import UserError
from pipeline.judge.scoring import encode_conversation
from stages.reward.dataset import GroupedPairSampler, split_by_group, tokenize_pairs
from stages.reward.heldout import heldout_from_pairs, heldout_from_rankings, heldout_metrics, kendall_tau

USER = [{"role": "user", "content": "What does len() return?"}]


@pytest.fixture(scope="module")
def tok(tiny_lm_dir):
    return AutoTokenizer.from_pretrained(tiny_lm_dir)


def test_a_conversation_is_encoded_with_the_chat_template_and_ends_with_eos(tok):
    ids, status = encode_conversation(tok, USER, "The number of items.", max_length=None)
    assert status == "ok"
    assert tok.decode(ids) == "<|user|>What does len() return?<|end|><|assistant|>The number of items.<|end|>"


def test_an_overlong_prompt_loses_its_oldest_tokens_and_keeps_the_whole_answer(tok):
    long_user = [{"role": "user", "content": "Tell me about lists. " * 20}]
    full, _ = encode_conversation(tok, long_user, "A list is ordered.", max_length=None)
    ids, status = encode_conversation(tok, long_user, "A list is ordered.", max_length=30)
    assert status == "truncated"
    assert ids == full[-30:]
    assert tok.decode(ids).endswith("<|assistant|>A list is ordered.<|end|>")


def test_an_answer_longer_than_max_length_is_reported_too_long(tok):
    _, status = encode_conversation(tok, USER, "word " * 100, max_length=30)
    assert status == "too_long"


def test_k_way_ranking_expands_to_all_pairs_with_their_rank_distance():
    h = heldout_from_rankings([{"prompt": USER, "responses": ["a", "b", "c"], "ranking": [2, 0, 1]}])
    item = {r[0]["content"]: i for i, r in enumerate(h.responses)}
    a, b, c = item["a"], item["b"], item["c"]
    assert sorted(h.pairs) == sorted([(c, a, 1), (c, b, 2), (a, b, 1)])
    assert h.rankings == [[[c], [a], [b]]]


def test_tied_answers_in_a_heldout_ranking_form_no_pair():
    h = heldout_from_rankings([{"prompt": USER, "responses": ["a", "b", "c"], "groups": [[2], [0, 1]]}])
    item = {r[0]["content"]: i for i, r in enumerate(h.responses)}
    a, b, c = item["a"], item["b"], item["c"]
    assert sorted(h.pairs) == sorted([(c, a, 1), (c, b, 1)])
    m = heldout_metrics(torch.tensor([0.0, 0.0, 1.0]), h)  # scores of a, b, c
    assert m["accuracy"] == 1.0 and m["kendall_tau"] == 1.0


def test_kendall_tau_known_answers():
    assert kendall_tau([3, 2, 1], [3, 2, 1]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    assert kendall_tau([3, 1, 2], [3, 2, 1]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 1, 1], [3, 2, 1]) is None


def test_heldout_metrics_bucket_accuracy_by_rank_distance_and_by_length():
    h = heldout_from_rankings([{"prompt": USER, "responses": ["long best answer", "mid", "x"],
                                "ranking": [0, 1, 2]}])
    best, mid, worst = (h.item(USER, r) for r in ("long best answer", "mid", "x"))
    scores = torch.zeros(3)
    scores[best], scores[mid], scores[worst] = 1.0, -1.0, 0.0  # gets best>mid, best>worst; misses mid>worst
    m = heldout_metrics(scores, h)
    assert m["pairs"] == 3
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["accuracy_gap1"] == pytest.approx(0.5) and m["pairs_gap1"] == 2
    assert m["accuracy_gap2"] == 1.0 and m["pairs_gap2"] == 1
    assert m["mean_margin"] == pytest.approx((2 + 1 - 1) / 3)
    assert m["pairs_chosen_shorter"] == 0 and m["accuracy_chosen_longer"] == pytest.approx(2 / 3)
    assert m["kendall_tau"] == pytest.approx(1 / 3)
    assert m["accuracy_by_rank_pair"] == {"1>2": 1.0, "1>3": 1.0, "2>3": 0.0}


def test_heldout_pairs_that_share_an_answer_score_it_once():
    recs = [{"prompt": USER, "chosen": "a", "rejected": "b"}, {"prompt": USER, "chosen": "a", "rejected": "c"}]
    h = heldout_from_pairs(recs)
    assert len(h.prompts) == 3 and len(h) == 2 and h.rankings == []


def _pair(chosen, rejected, group="g", **extra):
    return {"prompt": USER, "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], "group": group, **extra}


def test_identical_and_overlong_pairs_are_dropped_and_counted(tok):
    pairs = [_pair("yes", "no"), _pair("same", "same"), _pair("ok", "word " * 100), _pair("fine", "bad", "h")]
    data = tokenize_pairs(pairs, tok, 40, use_margin=False, source="prefs.jsonl")
    assert data.counts["pairs_in"] == 4 and data.counts["kept"] == 2
    assert data.counts["identical"] == 1 and data.counts["too_long"] == 1
    assert data.groups == [0, 1]
    assert set(data.columns(False)) == {"chosen_ids", "rejected_ids"}


def test_a_file_without_a_usable_pair_is_an_error_naming_it(tok):
    with pytest.raises(UserError, match="prefs.jsonl"):
        tokenize_pairs([_pair("same", "same")], tok, 40, use_margin=False, source="prefs.jsonl")


def test_margin_comes_from_the_data_or_from_the_rank_distance(tok):
    data = tokenize_pairs([_pair("a", "b", margin=2.0), _pair("a", "c", rank_gap=3)], tok, 64, use_margin=True,
                          source="p")
    assert data.margins == [2.0, 1.0]
    with pytest.raises(UserError, match="use_margin"):
        tokenize_pairs([_pair("a", "b")], tok, 64, use_margin=True, source="p")


def test_grouped_sampler_keeps_each_prompts_pairs_together_and_reshuffles_per_epoch():
    groups = [g for g in range(10) for _ in range(6)]
    sampler = GroupedPairSampler(groups, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(60))
    blocks = [first[i:i + 6] for i in range(0, 60, 6)]
    assert all(len({groups[i] for i in block}) == 1 for block in blocks)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_split_by_group_holds_out_whole_prompts():
    pairs = [_pair("a", "b", group=f"p{i % 10}") for i in range(60)]
    train, held = split_by_group(pairs, 0.2, seed=0)
    assert len(held) == 12 and len(train) == 48
    assert not {p["group"] for p in train} & {p["group"] for p in held}


def test_an_hh_transcript_pair_trains_on_the_shared_prefix_as_prompt_in_our_chat_format(tok, tmp_path):
    import json

    from data.loaders import load_pairs

    f = tmp_path / "hh.jsonl"
    f.write_text(json.dumps({
        "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a list method\n\nAssistant: append",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Name a list method\n\nAssistant: no"}) + "\n")
    data = tokenize_pairs(load_pairs(str(f)), tok, 128, use_margin=False, source=str(f))
    prompt = "<|user|>Hi there<|end|><|assistant|>Hello!<|end|><|user|>Name a list method<|end|><|assistant|>"
    assert tok.decode(data.chosen_ids[0]) == prompt + "append<|end|>"
    assert tok.decode(data.rejected_ids[0]) == prompt + "no<|end|>"


def test_each_distinct_answer_is_forwarded_once_with_the_same_loss_and_gradient(tiny_lm_dir, tok):
    """One prompt, K=4 answers, all 6 pairs in one batch: 12 rows but 4 distinct answers. The shared
    forward must give exactly the per-row rewards, Bradley-Terry loss and gradient of forwarding every row."""
    from transformers import AutoModelForSequenceClassification

    from stages.reward.trainer import forward_unique_rows

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_lm_dir, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    answers = [encode_conversation(tok, USER, a, max_length=None)[0]
               for a in ("The number of items.", "A count.", "It returns nothing useful at all.", "len")]
    pairs = [(i, j) for i in range(4) for j in range(i + 1, 4)]
    width = max(map(len, answers))
    rows = [answers[i] for i, _ in pairs] + [answers[j] for _, j in pairs]  # chosen, then rejected
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])

    def loss_and_grad(forward):
        model.zero_grad()
        rewards = forward(input_ids=ids, attention_mask=mask).logits.squeeze(-1)
        chosen, rejected = rewards.chunk(2)
        loss = -torch.nn.functional.logsigmoid(chosen - rejected).mean()
        loss.backward()
        return rewards.detach(), loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    counts = {}
    shared = loss_and_grad(forward_unique_rows(model, counts))
    every_row = loss_and_grad(model)
    assert counts == {"rows": 12, "forwarded": 4}
    assert torch.allclose(shared[0], every_row[0], atol=1e-5)
    assert shared[1] == pytest.approx(every_row[1], abs=1e-6)
    assert len(shared[2]) == len(every_row[2]) > 0
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(shared[2], every_row[2]))


def test_a_batch_size_that_splits_equal_sized_prompts_is_warned_about_and_mixed_sizes_are_not():
    from stages.reward.dataset import straddling_batches

    six_each = [g for g in range(4) for _ in range(6)]  # K=4 rankings: 6 pairs per prompt
    assert straddling_batches(six_each, 12) is None
    assert "not a multiple of the 6 pairs" in straddling_batches(six_each, 16)
    mixed = six_each + [9] * 28 + [10] * 3  # prepared K=4 beside own K=8 answers with ties
    assert straddling_batches(mixed, 12) is None
