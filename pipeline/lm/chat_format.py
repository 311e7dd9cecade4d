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
"""

from __future__ import annotations

import re

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
    """(token ids of the rendered conversation, 1 on the assistant's tokens): exactly the ids
    `apply_chat_template(messages, tokenize=True)` gives. Raises MaskError where the template's
    rendering is not consistent enough to find the assistant's tokens."""
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
