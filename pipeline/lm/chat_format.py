"""A model's own chat format: which tokens are the assistant's (for assistant-only loss), which
token ends a turn (where generation stops), and where a rendered answer ends (what a reward
model reads last).

A tokenizer that brings a chat template keeps it (pipeline.lm.tokenizer.ensure_chat_ready); these
functions read any template, ours included:

- `assistant_mask`: with `{% generation %}` markers (ours) the template marks the assistant's
  tokens itself. Without them (Llama-3, ChatML, Gemma, Mistral, ... as released) each assistant
  turn is found by rendering the conversation up to it: the text the turn adds after the
  generation prompt is the assistant's. The template must render consistently for that (every
  shorter conversation a prefix of the longer one, in text and in tokens, each answer's text
  inside its span); where it does not, `MaskError` says why and SFT refuses, naming
  `sft.assistant_only_loss=false`.
- `turn_end_ids`: the token the template writes right after an assistant's answer
  (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, our `<|end|>`), with EOS: generation stops at any.
- `encode_chat`: a conversation's token ids with every message's content as plain text, so a
  `<|end|><|assistant|>` in data or typed by a user cannot forge a turn. Every stage, the chat and
  the server encode conversations through it (or, inside TRL's DPO/GRPO/RLOO, `content_as_text`).
"""

from __future__ import annotations

import functools
import inspect
import re

from pipeline.errors import UserError

TURN_OFF = "sft.assistant_only_loss=false"
_MARKERS = re.compile(r"\{%-?\s*generation\s*-?%\}")
_PROBE = "Probe answer seven."  # an answer text no template rewrites


class MaskError(ValueError):
    """The chat template cannot tell the assistant's tokens apart (the message says why)."""


def has_generation_markers(tokenizer) -> bool:
    template = tokenizer.chat_template
    if isinstance(template, dict):
        template = template.get("default", "")
    return bool(template) and _MARKERS.search(template) is not None


def render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_mask(tokenizer, messages: list[dict]) -> tuple[list[int], list[int]]:
    """(token ids of the rendered conversation, 1 on the assistant's tokens): encode_chat's ids, so
    content is plain text. Raises MaskError where the template's
    rendering is not consistent enough to find the assistant's tokens."""
    pattern = _special_pattern(tokenizer)
    if _contains(pattern, messages):
        return _assistant_mask_marked(tokenizer, pattern, messages)
    if has_generation_markers(tokenizer):
        out = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        return list(out["input_ids"]), list(out["assistant_masks"])
    try:
        spans, full = _assistant_spans(tokenizer, messages)
    except MaskError:
        raise
    except Exception as e:  # a template that raises on a shorter conversation (jinja errors vary)
        raise MaskError(f"rendering the conversation up to an assistant turn failed ({e})") from None
    enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    mask = [int(any(a <= start < b for a, b in spans)) for start, _ in offsets]
    for a, _ in spans:  # the prompt before each answer must tokenize as it does at generation time
        prefix = tokenizer(full[:a], add_special_tokens=False)["input_ids"]
        if ids[:len(prefix)] != list(prefix) or (len(prefix) < len(ids) and not mask[len(prefix)]):
            raise MaskError("the prompt before an answer tokenizes differently alone than inside the conversation")
    return ids, mask


def _assistant_mask_marked(tokenizer, pattern, messages: list[dict]) -> tuple[list[int], list[int]]:
    """assistant_mask for a conversation whose content holds special strings (encode_chat's ids): the
    assistant's spans are found by rendering prefixes, for any template, ours included."""
    text, literal, to_text, marked = _render_marked(tokenizer, pattern, messages, False)
    try:
        spans, _ = _assistant_spans(tokenizer, marked)
    except MaskError:
        raise
    except Exception as e:  # as in assistant_mask
        raise MaskError(f"rendering the conversation up to an assistant turn failed ({e})") from None
    spans = [(to_text[a], to_text[b]) for a, b in spans]
    ids, offsets = _encode_marked(tokenizer, pattern, text, literal)
    return ids, [int(any(a <= start < b for a, b in spans)) for start, _ in offsets]


def _assistant_spans(tokenizer, messages: list[dict]) -> tuple[list[tuple[int, int]], str]:
    """Character spans of the assistant turns in the rendered conversation, found by rendering
    its prefixes: the text an assistant turn adds after the generation prompt, less trailing
    whitespace (the newline after ChatML's <|im_end|> is the template's, not the answer's)."""
    full = render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tokenizer, messages[:i], add_generation_prompt=True) if i else ""
        upto = render(tokenizer, messages[:i + 1])
        if not upto.startswith(before) or not full.startswith(upto):
            raise MaskError(f"rendering message {i + 1} changes the text before it (the template is not prefix-"
                            "consistent)")
        end = len(upto.rstrip()) if upto.rstrip() else len(upto)
        if (m.get("content") or "").strip() not in upto[len(before):end]:
            raise MaskError(f"assistant message {i + 1}'s text is not where the template renders that turn")
        spans.append((len(before), end))
    return spans, full


def check_assistant_mask(tokenizer, what: str) -> None:
    """Refuse, in one line naming the option that turns assistant-only loss off, a tokenizer whose
    chat template cannot mark the assistant's tokens (probed on a 2-turn conversation)."""
    probe = [{"role": "user", "content": "Question one?"}, {"role": "assistant", "content": _PROBE},
             {"role": "user", "content": "Question two?"}, {"role": "assistant", "content": "Answer two."}]
    try:
        ids, mask = assistant_mask(tokenizer, probe)
        if not any(mask):
            raise MaskError("no token is marked as the assistant's")
    except MaskError as e:
        raise MaskError(refusal(what, str(e))) from None


def refusal(what: str, reason: str) -> str:
    return (f"{what}: the chat template cannot mark the assistant's tokens for assistant-only loss ({reason}); "
            f"set {TURN_OFF} to train on whole conversations, or give the tokenizer a template with "
            "{% generation %} markers.")


def turn_end_ids(tokenizer) -> set[int]:
    """EOS and the token the chat template writes right after an assistant's answer."""
    ids = {int(tokenizer.eos_token_id)} if tokenizer.eos_token_id is not None else set()
    if not tokenizer.chat_template:
        return ids
    try:
        text = render(tokenizer, [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": _PROBE}])
    except Exception:  # a template that will not render a plain exchange has no turn end to find
        return ids
    at = text.find(_PROBE)
    if at < 0:
        return ids
    rest = text[at + len(_PROBE):].lstrip()
    added = tokenizer.get_added_vocab()
    found = [t for t in added if t and rest.startswith(t)]
    if found:
        ids.add(int(added[max(found, key=len)]))
    return ids


def close_at_turn_end(tokenizer, ids: list[int]) -> list[int]:
    """A rendered conversation cut right after its last turn-end token where only whitespace
    follows (ChatML's newline): an answer sampled by the policy ends at that token, so the
    reward model must be trained and read there too."""
    ends = turn_end_ids(tokenizer)
    last = next((i for i in range(len(ids) - 1, -1, -1) if ids[i] in ends), None)
    if last is None or last == len(ids) - 1:
        return ids
    if tokenizer.decode(ids[last + 1:]).strip():
        return ids
    return ids[:last + 1]


# --- Special tokens are text when they come from data or users -------------------------------------------
# A template's markers (<|user|>, <|im_start|>, EOS, ...) are special tokens; the same strings inside a
# message are the writer's text, or anyone could forge a turn. Content that contains none of them is
# encoded by the single ordinary tokenizer call, so ordinary data keeps exactly the ids it always had.
_PRIVATE = [chr(c) for c in range(0xE000, 0xE100)]  # sentinel candidates: Unicode private use


def encode_chat(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> list[int]:
    """Token ids of the conversation in the tokenizer's chat template: the template's own markers are
    special tokens, every message's content is plain text (a `<|end|>` typed by a user is the
    characters `<|end|>`). Exactly `apply_chat_template(..., tokenize=True)`'s ids where no content
    contains a special token's string."""
    pattern = _special_pattern(tokenizer)
    if not _contains(pattern, messages):
        text = render(tokenizer, messages, add_generation_prompt)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    text, literal, _, _ = _render_marked(tokenizer, pattern, messages, add_generation_prompt)
    return _encode_marked(tokenizer, pattern, text, literal, offsets=False)[0]


def content_as_text(tokenizer) -> dict:
    """`chat_template_kwargs` for TRL's trainers that tokenize conversations themselves (DPO, GRPO,
    RLOO): transformers' own switch that encodes special strings in messages as text. Like encode_chat
    it leaves content without them as the plain call encodes it; where one is found, transformers
    splits the text around it rather than at the template's markers (same text, other token
    boundaries)."""
    if "sanitize_control_tokens" not in inspect.signature(tokenizer.apply_chat_template).parameters:
        raise UserError("this transformers cannot encode special tokens in messages as text for TRL's "
                        "trainers: pip install 'transformers>=5.24'")
    return {"sanitize_control_tokens": True}


def _special_pattern(tokenizer) -> re.Pattern | None:
    strings = tuple(sorted({t.content for t in tokenizer.added_tokens_decoder.values() if t.special and t.content},
                           key=len, reverse=True))
    return _compiled(strings)


@functools.lru_cache(maxsize=16)
def _compiled(strings: tuple[str, ...]) -> re.Pattern | None:
    return re.compile("|".join(map(re.escape, strings))) if strings else None  # longest first wins


def _contains(pattern, messages: list[dict]) -> bool:
    return pattern is not None and any(isinstance(m.get("content"), str) and pattern.search(m["content"])
                                       for m in messages)


def _render_marked(tokenizer, pattern, messages: list[dict], add_generation_prompt: bool):
    """(rendered text, character spans of the special strings that came from content, the map from a
    position in the marked rendering to one in the text, the marked messages). Each such string is
    wrapped in two private-use sentinels absent from the conversation before rendering (so the
    template's own transforms still apply) and unwrapped after; a sentinel the template split off its
    partner is dropped."""
    seen = "".join(str(m.get("content", "")) for m in messages) + str(tokenizer.chat_template)
    start, end = [c for c in _PRIVATE if c not in seen][:2]
    marked = [{**m, "content": pattern.sub(lambda x: start + x.group(0) + end, m["content"])}
              if isinstance(m.get("content"), str) else m for m in messages]
    rendered = render(tokenizer, marked, add_generation_prompt)
    return _unmark(rendered, start, end, pattern) + (marked,)


def _unmark(rendered: str, start: str, end: str, pattern) -> tuple[str, list[tuple[int, int]], list[int]]:
    wrapped = re.compile(f"{re.escape(start)}({pattern.pattern}){re.escape(end)}|[{start}{end}]")
    text, literal, to_text, at = [], [], [], 0  # to_text[i]: where rendered[i] lands in the text

    def keep(chars: str) -> None:
        for c in chars:
            to_text.append(len(text))
            text.append(c)

    for m in wrapped.finditer(rendered):
        keep(rendered[at:m.start()])
        to_text.append(len(text))  # the opening (or a lone) sentinel
        if m.group(1) is not None:
            first = len(text)
            keep(m.group(1))
            literal.append((first, len(text)))
            to_text.append(len(text))  # the closing sentinel
        at = m.end()
    keep(rendered[at:])
    to_text.append(len(text))
    return "".join(text), literal, to_text


def _encode_marked(tokenizer, pattern, text: str, literal: list[tuple[int, int]], offsets: bool = True):
    """(ids, character offsets or None) of `text` whose special strings are markers except inside `literal`:
    each marker is its token, each stretch between two markers is encoded as plain text on its own (as
    the tokenizer itself encodes the text between two special tokens)."""
    ids, spans, at = [], [], 0
    inside = lambda a: any(s <= a < e for s, e in literal)  # noqa: E731
    markers = [m for m in pattern.finditer(text) if not inside(m.start())]
    for m in [*markers, None]:
        gap_end = m.start() if m else len(text)
        if gap_end > at:
            gap_ids, gap_spans = _plain(tokenizer, text[at:gap_end], after_marker=at > 0, offsets=offsets)
            ids += gap_ids
            spans += [(at + a, at + b) for a, b in gap_spans or []]
        if m:
            ids.append(tokenizer.convert_tokens_to_ids(m.group(0)))
            spans.append(m.span())
            at = m.end()
    return ids, spans if offsets else None


def _plain(tokenizer, text: str, after_marker: bool, offsets: bool):
    """Ids and (where asked: slow tokenizers have none) offsets of `text`, no special token matched. Behind a marker it is encoded after a
    newline that is then removed: a SentencePiece tokenizer would otherwise add the space it puts at
    the start of a string, which it does not put behind a special token."""
    def enc(s: str):
        out = tokenizer(s, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=offsets)
        return list(out["input_ids"]), list(out["offset_mapping"]) if offsets else None

    if after_marker:
        newline, _ = enc("\n")
        ids, spans = enc("\n" + text)
        n = len(newline)
        if newline and ids[:n] == newline:
            return ids[n:], spans and [(max(a - 1, 0), max(b - 1, 0)) for a, b in spans[n:]]
    return enc(text)
