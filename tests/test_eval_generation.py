"""Batched generation with a KV cache, answer log-probabilities, and held-out LM metrics."""

import math

import pytest
import torch
from eval_fixtures import lively_copy
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.lm.generation import answer_logprobs, eos_ids_of, generate, generate_batched
from stages.eval.lm import lm_metrics

QUESTIONS = ["Hi", "What does the king say about the crown and the sword?", "Tell me more"]


@pytest.fixture(scope="module")
def lively(tiny_lm_dir, tmp_path_factory):
    d = lively_copy(tiny_lm_dir, tmp_path_factory.mktemp("lively"), seed=1)
    model = AutoModelForCausalLM.from_pretrained(d).eval()
    tok = AutoTokenizer.from_pretrained(d)
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                       tokenize=True, return_dict=False) for q in QUESTIONS]
    return model, tok, [list(p) for p in prompts]


def test_left_padded_batch_gives_the_same_greedy_answers_as_one_prompt_at_a_time(lively):
    model, tok, prompts = lively
    kw = dict(max_new_tokens=16, eos_ids=eos_ids_of(model, tok), pad_id=tok.pad_token_id, temperature=0)
    batched = generate(model, prompts, **kw)
    alone = [generate(model, [p], **kw)[0] for p in prompts]
    assert batched == alone
    assert len(set(map(tuple, batched))) > 1  # the prompts matter: not one repeated token
    hf = model.generate(torch.tensor([prompts[1]]), max_new_tokens=16, do_sample=False)[0, len(prompts[1]):]
    assert alone[1] == hf.tolist()[: len(alone[1])]


def test_sampling_is_reproducible_for_a_seed_and_keeps_input_order(lively):
    model, tok, prompts = lively
    kw = dict(max_new_tokens=10, eos_ids=eos_ids_of(model, tok), pad_id=tok.pad_token_id, temperature=1.0)
    a = generate_batched(model, prompts, batch_size=2, generator=torch.Generator().manual_seed(3), **kw)
    b = generate_batched(model, prompts, batch_size=2, generator=torch.Generator().manual_seed(3), **kw)
    c = generate_batched(model, prompts, batch_size=2, generator=torch.Generator().manual_seed(4), **kw)
    assert a == b and a != c


def test_answer_logprobs_are_the_log_softmax_the_sampler_saw(lively):
    model, tok, prompts = lively
    seen = []
    answer = generate(model, prompts[:1], max_new_tokens=5, eos_ids=eos_ids_of(model, tok), pad_id=tok.pad_token_id,
                      temperature=0, on_step=lambda step, logits, picked: seen.append(
                          float((logits[0] / 0.7).log_softmax(-1)[picked[0]])))[0]
    lp = answer_logprobs(model, prompts[:1], [answer], pad_id=tok.pad_token_id, temperature=0.7)[0]
    assert lp == pytest.approx(seen, abs=1e-4)


def test_a_model_that_knows_nothing_scores_log_vocab_nats_per_token(lively):
    model, tok, _ = lively
    blank = AutoModelForCausalLM.from_config(model.config).eval()
    with torch.no_grad():
        for p in blank.parameters():
            p.zero_()  # every logit 0: the uniform distribution over the vocabulary
    texts = ["To be, or not to be, that is the question.", "Whether 'tis nobler in the mind to suffer"]
    m = lm_metrics(blank, tok, texts, max_tokens=1000, window=16)
    vocab = model.config.vocab_size
    assert m["loss"] == pytest.approx(math.log(vocab), rel=1e-5)
    assert m["perplexity"] == pytest.approx(vocab, rel=1e-4)
    assert m["bits_per_byte"] == pytest.approx(m["tokens"] * math.log2(vocab) / m["bytes"], rel=1e-5)
    trained_like = lm_metrics(model, tok, texts, max_tokens=1000, window=16)
    assert trained_like["tokens"] == m["tokens"] and trained_like["bytes"] == m["bytes"]
