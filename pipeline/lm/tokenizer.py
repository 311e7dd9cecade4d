"""Byte-level BPE tokenizer with chat roles, and the chat template every stage shares.

One token, `<|end|>`, ends both a pretraining document and a chat turn, and is the EOS that
generation stops at. Padding has its own token, so PPO can tell padding from a real EOS.
The template wraps assistant content in `{% generation %}` markers: TRL's assistant-only loss
(SFT) reads them. A foreign tokenizer keeps its own template (`ensure_chat_ready`).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from pipeline.lm.chat_format import turn_end_ids
from pipeline.lm.loading import loading

PAD, EOS = "<|pad|>", "<|end|>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, EOS, *ROLE_TOKENS)

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "<|assistant|>{% generation %}{{ message['content'] }}{{ eos_token }}{% endgeneration %}"
    "{% elif message['role'] in ['system', 'user'] %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('unknown chat role: ' + message['role']) }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def train_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts` (every byte is representable: no unknown tokens)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok)


def wrap_tokenizer(tok: Tokenizer, **special_tokens: str) -> PreTrainedTokenizerFast:
    """A Hugging Face tokenizer with our EOS, PAD, role tokens and chat template (plus e.g. `unk_token=`)."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **special_tokens,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        chat_template=CHAT_TEMPLATE,
        padding_side="right",
        clean_up_tokenization_spaces=False,
        model_max_length=1_000_000,
    )


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False) -> tuple[PreTrainedTokenizerBase, list[str]]:
    """Load any tokenizer and make it chat-ready; returns it with a list of what was changed."""
    with loading(name_or_path, "tokenizer", model=False, tokenizer=True):
        tok = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
    return tok, ensure_chat_ready(tok)


def ensure_chat_ready(tok: PreTrainedTokenizerBase) -> list[str]:
    """Make a tokenizer chat-ready without changing what it already means.

    A tokenizer with a chat template keeps it, with its special tokens and BOS (SFT's assistant-only
    loss reads any consistent template: pipeline.lm.chat_format). One without gets our role tokens and
    template, behind its BOS when it has one. PAD must differ from EOS and from the template's end of
    turn (PPO tells padding from a finished answer by it): where it does not, a new PAD token is
    added; EOS is never reassigned. Returns what was added, so the caller can log it and resize the
    model's embeddings.
    """
    changes = []
    if tok.eos_token is None:
        tok.add_special_tokens({"eos_token": EOS})
        changes.append(f"added EOS token {EOS}")
    if tok.pad_token is None or tok.pad_token_id in turn_end_ids(tok):
        tok.add_special_tokens({"pad_token": PAD})
        changes.append(f"added PAD token {PAD} (distinct from EOS and the end of a turn)")
    if not tok.chat_template:
        missing = [t for t in ROLE_TOKENS if t not in tok.get_vocab()]
        if missing:
            tok.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
            changes.append(f"added role tokens {', '.join(missing)}")
        has_bos = tok.bos_token is not None and tok.bos_token != tok.eos_token
        tok.chat_template = ("{{ bos_token }}" if has_bos else "") + CHAT_TEMPLATE
        changes.append("set our chat template (with {% generation %} markers for assistant-only loss)"
                       + (f", starting with BOS {tok.bos_token}" if has_bos else ""))
    return changes
