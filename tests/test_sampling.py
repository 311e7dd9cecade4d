"""The one sampling loop (PPO rollouts, evaluation, chat): draws follow exactly softmax(logits / T),
and the KV-cache loop over left-padded prompts continues each prompt as a full forward of that
prompt alone would."""

import math

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.generation import draw, left_pad, sample
from pipeline.lm_forward import positions_from_mask


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
