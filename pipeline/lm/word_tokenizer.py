"""A word-level vocabulary, as the lecture starts: words and punctuation, the most frequent kept.

    tokenizer.kind=word   (the default, `bpe`, is pipeline.lm.tokenizer's byte-level BPE)

A token is a word (letters, combining marks and digits of any script: `café`, `мир`, `हिन्दी`),
one punctuation mark or symbol, or a newline. The `tokenizer.vocab_size` most frequent of them
(at least `tokenizer.min_frequency` times in the training text) make the vocabulary, special
tokens included; every other word is `<|unk|>` (written back with a space before it), which is
why the pretraining and evaluation reports count the unknown tokens of held-out text.

Whitespace is normalised, and the text is written as the normalised text: Unicode NFC, CRLF ->
newline, any run of spaces and tabs -> one space, no space next to a newline, none at either
end. So `decode(encode(text)) == normalise(text)` for text whose words are all in the vocabulary.
A space before a token is kept as part of it, `▁` (SentencePiece's mark): `Hello, world.` is
`Hello` `,` `▁world` `.`, which is what lets decoding put every space back where it was. The
price: a word after a space (`▁the`) and the same word at a line start or after a quote (`the`)
are two tokens.

Everything is a standard `tokenizers` component, so the saved directory loads with
`AutoTokenizer.from_pretrained` and no custom code, and has the chat template and role tokens
the later stages need.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from pipeline.lm.tokenizer import SPECIAL_TOKENS, wrap_tokenizer

UNK = "<|unk|>"
SPACE = "\u2581"  # ▁ stands for the space before a token
_WORD = r"\p{L}\p{M}\p{N}"  # letters, combining marks (accents, Indic vowel signs) and digits of any script
# A word, or one other non-space character (punctuation, symbol), each with its space; or a newline.
TOKEN_PATTERN = f"{SPACE}?[{_WORD}]+|{SPACE}?[^{_WORD}\\s{SPACE}]|\\n"


def _normalizer():
    return normalizers.Sequence([
        normalizers.NFC(),
        normalizers.Replace("\r\n", "\n"),
        normalizers.Replace(Regex(r"[^\S\n]+"), " "),
        normalizers.Replace(Regex(r" ?\n ?"), "\n"),
        normalizers.Strip(),
        normalizers.Replace(" ", SPACE),
    ])


def train_word_tokenizer(texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> PreTrainedTokenizerFast:
    """The `vocab_size` most frequent words and marks of `texts` (special tokens included), the rest <|unk|>."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.normalizer = _normalizer()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(TOKEN_PATTERN), behavior="isolated")
    # Metaspace turns each ▁ back into a space and drops the one at the very start of the text. An
    # unknown word has lost its space with its spelling: most words follow a space, so it gets one.
    tok.decoder = decoders.Sequence([decoders.Replace(UNK, SPACE + UNK),
                                     decoders.Metaspace(replacement=SPACE, prepend_scheme="always", split=True)])
    trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                        special_tokens=[*SPECIAL_TOKENS, UNK], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(tok, unk_token=UNK)


def normalise(text: str) -> str:
    """The text as a word tokenizer writes it back (see the module docstring)."""
    return _normalizer().normalize_str(text).replace(SPACE, " ")


def count_unknown(tokenizer, token_ids) -> int:
    """How many of `token_ids` are the unknown token (0 for a tokenizer without one, such as byte-level BPE)."""
    import numpy as np

    unk = tokenizer.unk_token_id
    return 0 if unk is None else int(np.count_nonzero(np.asarray(token_ids) == unk))
