"""Tiny models "from elsewhere" for tests: other architectures, other tokenizers, their own chat formats.

Built offline in about a second each, so tests can check what the pipeline does to a model it did not
make (keep its chat template, special tokens and BOS) without a hub:

    build_tiny_chatml_model(dir)   -> dir: Qwen2ForCausalLM + byte-level BPE, ChatML template
                                      (<|im_start|>/<|im_end|>), BOS <|startoftext|> written by the
                                      template, EOS <|endoftext|> (not the end of a turn), PAD == EOS
    build_tiny_llama3_model(dir)   -> dir: LlamaForCausalLM + a Llama-3-like template (<|eot_id|> ends a
                                      turn), BOS <|begin_of_text|> written by the template AND added
                                      by the tokenizer on encode (the double-BOS trap), no PAD
    build_tiny_reward_model(base, dir) -> dir: a one-output sequence classifier from `base`'s weights
    tiny_tokenizer(family)         -> the tokenizer alone, for "chatml", "llama3", "gemma", "mistral"
    TEMPLATES[family]              -> that family's chat template (written here: formats, not copies)

Vocabularies are padded to a multiple of 64 rows, as released models' embeddings usually are.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

CHATML = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3 = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim"
    " + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
GEMMA = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
MISTRAL = (  # no generation prompt: the answer follows [/INST] directly
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
)
TEMPLATES = {"chatml": CHATML, "llama3": LLAMA3, "gemma": GEMMA, "mistral": MISTRAL}

# family -> (special tokens, bos, eos, pad, whether encode() adds BOS)
_SPECIALS = {
    "chatml": (["<|endoftext|>", "<|startoftext|>", "<|im_start|>", "<|im_end|>"],
               "<|startoftext|>", "<|endoftext|>", "<|endoftext|>", False),
    "llama3": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
               "<|begin_of_text|>", "<|end_of_text|>", None, True),
    "gemma": (["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<pad>", True),
    "mistral": (["<unk>", "<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", None, True),
}


def _text() -> str:
    """A few KB of chat-like lines: enough for a BPE that merges the words tests talk about."""
    things = "apple river castle horse sword crown letter candle garden ship".split()
    colours = "red green blue yellow black white".split()
    lines = [f"What colour is the {t}? The {t} is {c}. Explain why the king said so, and how it works."
             for t in things for c in colours]
    return "\n".join(lines)


def tiny_tokenizer(family: str = "chatml", vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with `family`'s special tokens, BOS/EOS/PAD and chat template."""
    specials, bos, eos, pad, adds_bos = _SPECIALS[family]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator([_text()], trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    if adds_bos:  # like Llama's tokenizers: encode() puts BOS first
        raw.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, raw.token_to_id(bos))])
    extra = [t for t in specials if t not in (bos, eos, pad)]
    return PreTrainedTokenizerFast(
        tokenizer_object=raw, bos_token=bos, eos_token=eos, pad_token=pad, additional_special_tokens=extra,
        chat_template=TEMPLATES[family], clean_up_tokenization_spaces=False, model_max_length=256,
    )


def _rows(tok) -> int:
    return 64 * -(-len(tok) // 64)


def _save(model, tok, out_dir) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def build_tiny_chatml_model(out_dir, *, seed: int = 0) -> Path:
    """A 2-layer Qwen2ForCausalLM with a ChatML tokenizer, saved to out_dir (returned)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer("chatml")
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=_rows(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    return _save(Qwen2ForCausalLM(config), tok, out_dir)


def build_tiny_llama3_model(out_dir, *, seed: int = 0) -> Path:
    """A 2-layer LlamaForCausalLM with a Llama-3-like tokenizer, saved to out_dir (returned)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer("llama3")
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=_rows(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id)
    return _save(LlamaForCausalLM(config), tok, out_dir)


def build_tiny_reward_model(base_dir, out_dir, *, seed: int = 0) -> Path:
    """A sequence classifier with one output (a fresh score head) on `base_dir`'s weights and tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1)
    return _save(model, AutoTokenizer.from_pretrained(base_dir), out_dir)
