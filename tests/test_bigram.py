"""The bigram baseline: add-k counts whose held-out loss matches a hand computation, sampled through the
project's one sampling loop, k chosen without the held-out text, saved and loaded as safetensors."""

import math

import numpy as np
import pytest
import torch

from pipeline.lm.bigram import K_GRID, BigramLM, choose_k
from pipeline.lm.generation import generate
from pipeline.lm.temperature_sweep import distinct_word_ratio, measured_text, repetition
from stages.pretrain.baseline import fit_bigram

A, B, C = 0, 1, 2
TRAIN = [A, B, A, B, A, C]  # pairs: ab ab ba ba ac -> count(a)=3, count(b)=2, count(c)=0 as a previous token


def test_held_out_loss_equals_the_hand_computed_value():
    bigram = BigramLM.fit(np.array(TRAIN), vocab_size=3, k=1.0)
    # p(b|a) = (2+1)/(3+3) = 1/2;  p(c|b) = (0+1)/(2+3) = 1/5;  p(a|c) = (0+1)/(0+3) = 1/3 (c never led)
    nll = bigram.nll([A, B, C], [B, C, A])
    assert nll == pytest.approx([math.log(2), math.log(5), math.log(3)])
    assert nll.mean() == pytest.approx(math.log(30) / 3)


def test_its_logits_are_normalised_log_probabilities_of_the_counts():
    bigram = BigramLM.fit(np.array(TRAIN), vocab_size=3, k=1.0)
    logits = bigram(input_ids=torch.tensor([[A, B, C]])).logits
    assert logits.shape == (1, 3, 3)
    assert torch.allclose(logits.exp().sum(-1), torch.ones(1, 3))
    assert logits[0, 0].exp().tolist() == pytest.approx([1 / 6, 3 / 6, 2 / 6])  # after a: a, b, c
    assert bigram(input_ids=torch.tensor([[A, B, C]]), logits_to_keep=1).logits.shape == (1, 1, 3)


def test_the_projects_sampling_loop_samples_it():
    bigram = BigramLM.fit(np.array([A, B, C] * 20), vocab_size=3, k=0.01)
    greedy = generate(bigram, [[A], [B]], max_new_tokens=5, eos_ids=set(), pad_id=0, temperature=0)
    assert greedy == [[B, C, A, B, C], [C, A, B, C, A]]
    hot = generate(bigram, [[A]] * 64, max_new_tokens=1, eos_ids=set(), pad_id=0, temperature=50.0,
                   generator=torch.Generator().manual_seed(0))
    assert {t for (t,) in hot} == {A, B, C}  # a flat distribution reaches the pairs never seen


def test_k_is_chosen_on_the_training_tokens_dev_slice():
    cycle = np.array([A, B, C] * 200)  # the dev slice repeats what was counted: the least smoothing wins
    assert choose_k(cycle, 3) == min(K_GRID)
    noise = np.random.default_rng(0).integers(0, 50, 5000)  # nothing to learn: the most smoothing wins
    assert choose_k(noise, 50) == max(K_GRID)


def test_pretraining_scores_it_on_the_gpts_validation_windows_in_bits_per_byte():
    bigram, m = fit_bigram(np.array(TRAIN * 50), np.array([A, B, C, A]), 3, block=3, n_windows=4,
                           bytes_per_token=2.0)
    expected = bigram.nll([A, B, C], [B, C, A]).mean()
    assert m["bigram_val_loss"] == pytest.approx(expected)
    assert m["bigram_val_bpb"] == pytest.approx(expected / math.log(2) / 2.0)


def test_save_and_load(tmp_path):
    bigram = BigramLM.fit(np.array(TRAIN), vocab_size=3, k=0.3)
    bigram.save(tmp_path)
    again = BigramLM.load(tmp_path)
    assert again.k == 0.3 and again.nll([A, B], [C, C]).tolist() == bigram.nll([A, B], [C, C]).tolist()
    assert BigramLM.load(tmp_path / "nothing") is None


def test_distinct_word_ratio_and_repetition_by_hand():
    text = "The cat, the cat. The cat!"
    assert distinct_word_ratio(text) == pytest.approx(2 / 6)  # the, cat
    assert repetition(text) == pytest.approx(2 / 4)  # (the cat the) and (cat the cat) come back once each
    assert repetition("a b c d") == 0 and distinct_word_ratio("a b c d") == 1
    assert repetition("") is None and distinct_word_ratio("...") is None


def test_an_unknown_token_counts_as_a_word_and_eos_does_not():
    from pipeline.lm.word_tokenizer import train_word_tokenizer

    tok = train_word_tokenizer(["the cat sat"], vocab_size=20, min_frequency=1)
    ids = tok("the zebra the zebra", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    text = measured_text(tok, ids)
    assert "<|end|>" not in text
    assert distinct_word_ratio(text) == pytest.approx(2 / 4)  # the, unk
    assert repetition(text) == pytest.approx(0 / 2)
    assert repetition(measured_text(tok, ids * 2)) > 0  # a loop through <|unk|> is repetition
