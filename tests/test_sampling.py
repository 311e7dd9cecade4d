"""The one sampling loop (PPO rollouts, evaluation, chat): draws follow exactly softmax(logits / T),
and the KV-cache loop over left-padded prompts continues each prompt as a full forward of that
prompt alone would."""

import math

import torch
from eval_fixtures import lively_copy
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.lm.forward import positions_from_mask
from pipeline.lm.generation import Decoding, draw, left_pad, sample


def test_inverse_cdf_sampling_matches_the_tempered_softmax():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, float("-inf"), 0.5, 3.0, -2.0],
                           [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 5.0]])
    temperature, n = 1.7, 40_000
    draws = torch.stack([draw(logits / temperature, generator=gen) for _ in range(n)])  # [n, 2]
    for row in range(2):
        expected = torch.softmax(logits[row] / temperature, -1) * n
        counts = torch.bincount(draws[:, row], minlength=8).float()
        assert counts[expected == 0].sum() == 0  # a token of probability 0 is never drawn
        keep = expected > 0
        chi2 = (((counts - expected)[keep]) ** 2 / expected[keep]).sum().item()
        dof = int(keep.sum()) - 1
        # chi-square with <= 7 degrees of freedom: 30 is far beyond its 99.99th percentile (~27.9 for 7).
        assert chi2 < 30, (row, chi2, dof)
    # The scale is 1/T, not T: at T=1.7 the top token of row 0 has this exact share.
    top = torch.softmax(logits[0] / temperature, -1)[6].item()
    assert abs((draws[:, 0] == 6).float().mean().item() - top) < 4 * math.sqrt(top * (1 - top) / n)


def test_cached_loop_continues_left_padded_prompts_like_full_forwards(tiny_lm_dir):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    prompts = [tok.encode("To be, or not to be"), tok.encode("Now"), tok.encode("What light through yonder")]
    q, m = left_pad(prompts, tok.pad_token_id)
    # A tiny temperature makes the draw the argmax: comparable to a greedy reference.
    out = sample(model, q, m, max_new_tokens=6, temperature=1e-4, eos_ids={-1}, pad_id=tok.pad_token_id)
    assert out.shape == (3, 6)
    for row, p in enumerate(prompts):
        seq = list(p)
        with torch.no_grad():
            for _ in range(6):
                ids = torch.tensor([seq])
                seq.append(int(model(input_ids=ids, position_ids=positions_from_mask(torch.ones_like(ids))).logits[0, -1]
                               .argmax()))
        assert out[row].tolist() == seq[len(p):]


def test_loop_stops_when_every_row_has_ended_and_pads_after_eos(tiny_lm_dir):
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_lm_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_lm_dir).eval()
    q, m = left_pad([tok.encode("Now"), tok.encode("To be, or not")], tok.pad_token_id)
    greedy = sample(model, q, m, max_new_tokens=5, temperature=1e-4, eos_ids={-1}, pad_id=tok.pad_token_id)
    stop = int(greedy[0, 1])  # treat row 0's second token as the end of turn
    out = sample(model, q, m, max_new_tokens=5, temperature=1e-4, eos_ids={stop}, pad_id=tok.pad_token_id)
    ends = [row.tolist().index(stop) if stop in row.tolist() else None for row in greedy]
    assert ends[0] is not None and ends[0] <= 1
    if ends[1] is not None and ends[1] < 4:  # both rows ended early: the loop stopped there
        assert out.size(1) == max(ends) + 1
    for row, end in enumerate(ends):
        if end is not None:
            assert out[row, :end + 1].tolist() == greedy[row, :end + 1].tolist()
            assert (out[row, end + 1:] == tok.pad_token_id).all()


def test_rows_that_join_and_leave_between_steps_continue_as_if_alone(tiny_lm_dir, tmp_path):
    """The server's continuous batching: a Decoding that drops ended rows and takes in new ones
    (prefilled separately, left-padded to a common width) gives each row the greedy continuation
    it gets in a batch of its own."""
    lively = lively_copy(tiny_lm_dir, tmp_path / "lively", seed=3)  # large weights: the context matters
    tok = AutoTokenizer.from_pretrained(lively)
    model = AutoModelForCausalLM.from_pretrained(lively).eval()
    prompts = [tok.encode("To be, or not to be"), tok.encode("Now"), tok.encode("What light through yonder window")]

    def alone(p, n):
        q, m = left_pad([p], tok.pad_token_id)
        return sample(model, q, m, max_new_tokens=n, temperature=0, eos_ids={-1}, pad_id=tok.pad_token_id)[0].tolist()

    state = Decoding(model, *left_pad(prompts[:2], tok.pad_token_id))
    got = {0: [], 1: []}
    rows = [0, 1]
    for step in range(8):
        tokens = state.logits.argmax(-1)
        for r, t in zip(rows, tokens.tolist()):
            got[r].append(t)
        if step == 2:  # row 0 ends; row 2 (a longer prompt) arrives
            state.keep([1])
            rows, tokens = [1], tokens[1:]
            state.advance(tokens)
            state.extend(Decoding(model, *left_pad(prompts[2:], tok.pad_token_id)))
            rows, got[2] = [1, 2], []
            continue
        state.advance(tokens)
    assert got[0] == alone(prompts[0], 3)
    assert got[1] == alone(prompts[1], 8)
    assert got[2] == alone(prompts[2], 5)
