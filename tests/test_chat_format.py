"""A model's own chat format survives: its template, special tokens and BOS are kept; the assistant's
tokens are found in any consistent template (known answers for each family); a template where they
cannot be is refused in one line naming the option; PAD differs from EOS and the end of a turn without
EOS changing; generation stops at the template's end-of-turn token."""

import pytest
import torch

from pipeline.lm.chat_format import (
    TURN_OFF,
    MaskError,
    assistant_mask,
    check_assistant_mask,
    close_at_turn_end,
    turn_end_ids,
)
from pipeline.lm.tokenizer import EOS, PAD, ensure_chat_ready, train_tokenizer
from tests.conftest import tiny_text
from tests.foreign_models import TEMPLATES, build_tiny_chatml_model, tiny_tokenizer

TWO_TURNS = [{"role": "user", "content": "What colour is the apple?"},
             {"role": "assistant", "content": "The apple is red."},
             {"role": "user", "content": "And the river?"},
             {"role": "assistant", "content": "Blue."}]

# family -> the text of the assistant's tokens in TWO_TURNS: each answer and the token that ends its turn
TRAINED = {
    "chatml": "The apple is red.<|im_end|>Blue.<|im_end|>",
    "llama3": "The apple is red.<|eot_id|>Blue.<|eot_id|>",
    "gemma": "The apple is red.<end_of_turn>Blue.<end_of_turn>",
    "mistral": " The apple is red.</s> Blue.</s>",
}
TURN_END = {"chatml": "<|im_end|>", "llama3": "<|eot_id|>", "gemma": "<end_of_turn>", "mistral": "</s>"}


@pytest.fixture(scope="module")
def ours():
    return train_tokenizer(tiny_text(30_000).split("\n\n"), vocab_size=300)


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_assistant_mask_of_each_family_is_the_answers_and_their_turn_end(family):
    tok = tiny_tokenizer(family)
    ids, mask = assistant_mask(tok, TWO_TURNS)
    assert ids == tok.apply_chat_template(TWO_TURNS, tokenize=True, return_dict=False)  # the ids inference sees
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == TRAINED[family]
    untrained = tok.decode([i for i, m in zip(ids, mask) if not m])
    assert "What colour is the apple?" in untrained and "And the river?" in untrained


def test_our_template_masks_exactly_as_its_generation_markers_do(ours):
    ids, mask = assistant_mask(ours, TWO_TURNS)
    out = ours.apply_chat_template(TWO_TURNS, return_dict=True, return_assistant_tokens_mask=True)
    assert (ids, mask) == (out["input_ids"], out["assistant_masks"])
    assert ours.decode([i for i, m in zip(ids, mask) if m]) == f"The apple is red.{EOS}Blue.{EOS}"


def test_a_template_that_rewrites_earlier_turns_is_refused_naming_the_option():
    tok = tiny_tokenizer("chatml")
    # The system message goes into the last user turn: each longer conversation re-renders the ones before.
    tok.chat_template = (
        "{% for message in messages %}{% if message['role'] == 'user' %}"
        "{{ '<|im_start|>user\n' + (messages[0]['content'] + ' ' if loop.last and messages[0]['role'] == "
        "'system' else '') + message['content'] + '<|im_end|>\n' }}"
        "{% elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' + message['content'] + "
        "'<|im_end|>\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(MaskError, match="not prefix-consistent"):
        assistant_mask(tok, [{"role": "system", "content": "Be brief."}, *TWO_TURNS])
    # A template that drops the assistant's text cannot be read either; the refusal is one line with the option.
    tok.chat_template = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
                         "(message['content'] if message['role'] != 'assistant' else 'ok') + '<|im_end|>\n' }}"
                         "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    with pytest.raises(MaskError) as err:
        check_assistant_mask(tok, "runs/x/sft")
    line = str(err.value)
    assert "\n" not in line and TURN_OFF in line and line.startswith("runs/x/sft:")


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_a_foreign_template_is_kept_with_its_specials_and_eos(family):
    tok = tiny_tokenizer(family)
    template, eos, eos_id, vocab = tok.chat_template, tok.eos_token, tok.eos_token_id, dict(tok.get_vocab())
    changes = ensure_chat_ready(tok)
    assert tok.chat_template == template and (tok.eos_token, tok.eos_token_id) == (eos, eos_id)
    assert all(tok.get_vocab()[t] == i for t, i in vocab.items())  # nothing renumbered
    assert tok.pad_token_id is not None and tok.pad_token_id not in turn_end_ids(tok)
    if family == "gemma":
        assert changes == []  # its own <pad> is already distinct
    else:
        assert tok.pad_token == PAD and any("PAD" in c for c in changes)
    assert ensure_chat_ready(tok) == []  # idempotent


def test_pad_equal_to_the_end_of_turn_gets_a_new_pad():
    tok = tiny_tokenizer("chatml")
    tok.pad_token = "<|im_end|>"  # EOS is <|endoftext|>, so only the turn end collides
    ensure_chat_ready(tok)
    assert tok.pad_token == PAD and tok.eos_token == "<|endoftext|>"


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_bos_starts_a_rendered_conversation_exactly_once(family):
    tok = tiny_tokenizer(family)
    if family != "chatml":  # these tokenizers also add BOS on encode: the template's BOS must not double
        assert tok("hi")["input_ids"][0] == tok.bos_token_id
    ids, _ = assistant_mask(tok, TWO_TURNS)
    prompt = tok.apply_chat_template(TWO_TURNS[:1], add_generation_prompt=True, tokenize=True, return_dict=False)
    for seq in (ids, prompt):
        assert seq[0] == tok.bos_token_id and seq.count(tok.bos_token_id) == 1


def test_a_base_tokenizer_with_bos_gets_our_template_behind_its_bos():
    tok = tiny_tokenizer("llama3")
    tok.chat_template = None
    ensure_chat_ready(tok)
    ids, mask = assistant_mask(tok, TWO_TURNS)
    assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    end = tok.eos_token  # its own EOS ends our turns
    assert tok.decode([i for i, m in zip(ids, mask) if m]) == f"The apple is red.{end}Blue.{end}"


@pytest.mark.parametrize("family", sorted(TEMPLATES))
def test_the_turn_end_is_the_token_after_an_answer(family, ours):
    tok = tiny_tokenizer(family)
    assert turn_end_ids(tok) == {tok.eos_token_id, tok.convert_tokens_to_ids(TURN_END[family])}
    assert turn_end_ids(ours) == {ours.eos_token_id}  # ours ends a turn with EOS: nothing new to stop at


def test_a_scored_conversation_ends_at_the_turn_end_like_a_sampled_answer(ours):
    from pipeline.judge.scoring import encode_conversation

    tok = tiny_tokenizer("chatml")
    ids, status = encode_conversation(tok, TWO_TURNS[:1], "Red.", max_length=None)
    assert status == "ok" and tok.convert_ids_to_tokens(ids[-1]) == "<|im_end|>"  # not ChatML's newline after it
    mine, _ = encode_conversation(ours, TWO_TURNS[:1], "Red.", max_length=None)
    assert mine == ours.apply_chat_template(TWO_TURNS[:1] + [{"role": "assistant", "content": "Red."}],
                                            tokenize=True, return_dict=False)  # ours: unchanged
    assert close_at_turn_end(tok, ids) == ids


@pytest.fixture(scope="module")
def chatml_lm(tmp_path_factory):
    """The ChatML fixture made chat-ready, with a head that always prefers <|im_end|>: an untrained
    model would almost never sample EOS, so only stopping at the turn end ends its answers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pipeline.lm.hf_glue import make_chat_ready
    from pipeline.lm.model import set_generation_defaults

    d = build_tiny_chatml_model(tmp_path_factory.mktemp("chatml"))
    tok, model = AutoTokenizer.from_pretrained(d), AutoModelForCausalLM.from_pretrained(d).eval()
    make_chat_ready(model, tok)
    set_generation_defaults(model, tok)
    end = tok.convert_tokens_to_ids("<|im_end|>")
    model.lm_head.register_forward_hook(lambda m, i, out: out.index_add(
        -1, torch.tensor([end]), torch.full((*out.shape[:-1], 1), 50.0)))
    return model, tok


def test_generation_stops_at_the_templates_end_of_turn(chatml_lm):
    from pipeline.lm.generation import chat_stop_ids as chat_stops
    from pipeline.lm.generation import eos_ids_of, generate

    model, tok = chatml_lm
    end = tok.convert_tokens_to_ids("<|im_end|>")
    assert end in eos_ids_of(model, tok) and end in chat_stops(model, tok)
    assert end in model.generation_config.eos_token_id  # saved with the model: HF generate stops there too
    prompt = tok.apply_chat_template(TWO_TURNS[:1], add_generation_prompt=True, tokenize=True, return_dict=False)
    answers = generate(model, [prompt, prompt], max_new_tokens=8, eos_ids=eos_ids_of(model, tok),
                       pad_id=tok.pad_token_id, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert answers == [[end], [end]]


def test_ppo_rollouts_end_at_the_templates_end_of_turn(chatml_lm):
    from stages.ppo.rollout import encode_prompts, generate, left_pad, sampling_config

    model, tok = chatml_lm
    ids, dropped = encode_prompts(tok, ["What colour is the apple?"] * 3, max_prompt_length=64)
    assert dropped == 0 and ids[0] == tok.apply_chat_template(TWO_TURNS[:1], add_generation_prompt=True,
                                                              tokenize=True, return_dict=False)
    q, m = left_pad(ids, tok.pad_token_id)
    resp, mask, has_eos = generate(model, q, m, sampling_config(tok, 8, 1.0), tok.eos_token_id, tok.pad_token_id, 2)
    assert has_eos.all() and mask.sum(1).tolist() == [1, 1, 1]
    assert (resp[:, 0] == tok.convert_tokens_to_ids("<|im_end|>")).all()
