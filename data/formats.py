"""Record normalisation: the public data formats, each turned into one canonical shape per task.

Every function takes one raw record (a dict) and returns the canonical record(s), raises
`BadRecord` (the loader turns it into a UserError naming file and line and the accepted formats),
or raises `Drop` for records that are well-formed but unusable (counted and reported, never silent).
"""

from __future__ import annotations

import hashlib
import json
import math
import re

SFT_FORMATS = ('{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}',
               '{"prompt": ..., "completion": ...} (strings or message lists)',
               '{"instruction": ..., "input": ..., "output": ...} (Alpaca)',
               'preference data: the chosen conversation of {"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", '
               '"rejected": ...} (HH), of chosen message lists, or {"prompt": ..., "chosen": ..., "rejected": ...}')
PAIR_FORMATS = ('{"prompt": ..., "chosen": ..., "rejected": ...} (strings or message lists)',
                '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", "rejected": ...} (HH transcripts, '
                'or message lists sharing their first turns)',
                '{"prompt": ..., "responses": [...], "ranking": [best, ..., worst]} (K-way, expanded to pairs)')
RANKING_FORMATS = ('{"prompt": ..., "responses": [...], "ranking": [best, ..., worst]}',
                   '{"prompt": ..., "responses": [...], "ranking": [[best], [tied, tied], ..., [worst]]} (ties)')
PROMPT_FORMATS = ('{"prompt": ...} (string or message list; the gold answer: "gold", else "completion", "chosen" or '
                  'the answer in "messages")',
                  '{"messages": [...]} (a trailing assistant turn becomes the gold answer)',
                  '{"chosen": "\\n\\nHuman: ...\\n\\nAssistant: ...", ...} (HH) or {"chosen": [messages], ...}: the '
                  'conversation up to the last assistant turn, which becomes the gold answer',
                  '{"instruction": ..., "input": ..., "output": ...} (output becomes the gold answer)',
                  'a .txt file: one prompt per line')
ROLES = {"system": "system", "user": "user", "assistant": "assistant", "human": "user", "gpt": "assistant"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


class BadRecord(Exception):
    """The record fits none of the accepted formats (message says what is wrong)."""


class Drop(Exception):
    """A well-formed record that cannot be used (e.g. chosen == rejected); the reason is counted."""


def _text(value, key: str) -> str:
    if not isinstance(value, str):
        raise BadRecord(f'"{key}" must be a string, got {type(value).__name__}')
    return value


def messages(value, key: str, default_role: str = "user") -> list[dict]:
    """A string (one message with `default_role`) or a list of {"role", "content"} messages."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise BadRecord(f'"{key}" must be a string or a non-empty list of messages')
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict) or "content" not in m or "role" not in m:
            raise BadRecord(f'"{key}"[{i}] is not a message with "role" and "content"')
        role = ROLES.get(str(m["role"]).lower())
        if role is None:
            raise BadRecord(f'"{key}"[{i}] has role {m["role"]!r}; expected one of {", ".join(sorted(ROLES))}')
        out.append({"role": role, "content": _text(m["content"], f"{key}[{i}].content")})
    return out


def _check_conversation(msgs: list[dict], key: str) -> list[dict]:
    if not any(m["role"] == "assistant" for m in msgs):
        raise BadRecord(f'"{key}" has no assistant message to learn from')
    return msgs


def sft(rec: dict) -> dict:
    """-> {"messages": [...]} from messages | prompt/completion | Alpaca."""
    if "messages" in rec:
        return {"messages": _check_conversation(messages(rec["messages"], "messages"), "messages")}
    if "conversations" in rec:  # ShareGPT-style name for the same list
        return {"messages": _check_conversation(messages(rec["conversations"], "conversations"), "conversations")}
    if "prompt" in rec and "completion" in rec:
        prompt = messages(rec["prompt"], "prompt")
        completion = messages(rec["completion"], "completion", default_role="assistant")
        return {"messages": _check_conversation(prompt + completion, "completion")}
    if "instruction" in rec and "output" in rec:
        return {"messages": [{"role": "user", "content": alpaca_prompt(rec)},
                             {"role": "assistant", "content": _text(rec["output"], "output")}]}
    if "chosen" in rec:  # preference data: learn the preferred conversation
        conversation = _prompt_and_chosen(rec)
        if not conversation[-1]["content"].strip():
            raise Drop("empty chosen answer")
        return {"messages": _check_conversation(conversation, "chosen")}
    raise BadRecord(f"no known SFT fields (found: {', '.join(sorted(rec)) or 'none'})")


def alpaca_prompt(rec: dict) -> str:
    instruction = _text(rec["instruction"], "instruction")
    extra = rec.get("input") or ""
    return f"{instruction}\n\n{_text(extra, 'input')}" if extra else instruction


def _group(prompt: list[dict]) -> str:
    """A stable id of a prompt, so pairs from one prompt can share a batch."""
    return hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).hexdigest()[:12]


def parse_hh(transcript: str, key: str) -> list[dict]:
    """`\\n\\nHuman: hi\\n\\nAssistant: hello` -> user/assistant messages."""
    parts = _HH_TURN.split(transcript)
    if len(parts) < 3 or parts[0].strip():
        raise BadRecord(f'"{key}" is a string but not an HH transcript ("\\n\\nHuman: ...\\n\\nAssistant: ...")')
    return [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
            for who, text in zip(parts[1::2], parts[2::2])]


def prompt_messages(value) -> list[dict]:
    """A prompt: a string, a message list, or an HH-style "\\n\\nHuman: ...\\n\\nAssistant:" string
    (its empty final assistant turn is the one the model is to write)."""
    if isinstance(value, str) and value.lstrip("\n").startswith("Human:") and _HH_TURN.match(value):
        return [m for m in parse_hh(value, "prompt") if m["content"] or m["role"] == "user"]
    return messages(value, "prompt")


def conversation(value, key: str) -> list[dict]:
    """A whole conversation: an HH transcript string or a message list."""
    return parse_hh(value, key) if isinstance(value, str) else messages(value, key)


def _prompt_and_chosen(rec: dict) -> list[dict]:
    """The chosen conversation of a preference record: prompt + chosen answer when there is a
    prompt (a chosen list that repeats the prompt is not doubled), else the chosen transcript."""
    if rec.get("prompt") not in (None, ""):
        prompt = prompt_messages(rec["prompt"])
        return prompt + _strip_prompt(prompt, messages(rec["chosen"], "chosen", default_role="assistant"))
    return conversation(rec["chosen"], "chosen")


def _answer_text(msgs: list[dict]) -> str | None:
    """The gold answer a reference conversation carries: its assistant turns' text (None if empty)."""
    text = "\n\n".join(m["content"] for m in msgs if m["role"] == "assistant").strip()
    return text or None


def _split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> tuple[list, list, list]:
    """The implicit prompt: the longest shared prefix of turns, ending with a user turn."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    while n and chosen[n - 1]["role"] != "user":
        n -= 1
    if n == 0:
        raise Drop("implicit prompt: chosen and rejected share no user turn")
    return chosen[:n], chosen[n:], rejected[n:]


def _strip_prompt(prompt: list[dict], answer: list[dict]) -> list[dict]:
    """Preference data sometimes repeats the prompt inside chosen/rejected; keep only the answer."""
    return answer[len(prompt):] if answer[:len(prompt)] == prompt and len(answer) > len(prompt) else answer


def _number(rec: dict, key: str):
    value = rec.get(key)
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRecord(f'"{key}" must be a number, got {value!r}') from None
    if not math.isfinite(number):  # JSON's NaN/Infinity: a margin or score nobody gave
        raise BadRecord(f'"{key}" must be a finite number, got {value!r}')
    return number


def pairs(rec: dict) -> list[dict]:
    """-> [{"prompt", "chosen", "rejected", "group", "rank_gap", "margin"}] (one, or all K-way pairs)."""
    if "responses" in rec or "ranking" in rec:
        r = ranking(rec)
        group = _group(r["prompt"])
        out = []
        tiers = r["groups"]
        for a, better in enumerate(tiers):  # tied answers (one tier) form no pair among themselves
            for b in range(a + 1, len(tiers)):
                for i in better:
                    for j in tiers[b]:
                        chosen, rejected = r["responses"][i], r["responses"][j]
                        if chosen == rejected:
                            continue  # two identical texts carry no preference
                        out.append({"prompt": r["prompt"], "chosen": [{"role": "assistant", "content": chosen}],
                                    "rejected": [{"role": "assistant", "content": rejected}],
                                    "group": group, "rank_gap": b - a, "margin": None})
        if not out:
            raise Drop("K-way: all responses identical")
        return out
    if "chosen" not in rec or "rejected" not in rec:
        raise BadRecord(f"no known preference fields (found: {', '.join(sorted(rec)) or 'none'})")
    if "prompt" in rec and rec["prompt"] not in (None, ""):
        prompt = prompt_messages(rec["prompt"])
        chosen = _strip_prompt(prompt, messages(rec["chosen"], "chosen", default_role="assistant"))
        rejected = _strip_prompt(prompt, messages(rec["rejected"], "rejected", default_role="assistant"))
    else:
        prompt, chosen, rejected = _split_shared_prefix(conversation(rec["chosen"], "chosen"),
                                                        conversation(rec["rejected"], "rejected"))
    if chosen == rejected:
        raise Drop("chosen == rejected")
    if not chosen or not rejected:
        raise Drop("empty chosen or rejected answer")
    margin = _number(rec, "margin")
    if margin is None and "score_chosen" in rec and "score_rejected" in rec:  # UltraFeedback-style scores
        sc, sr = _number(rec, "score_chosen"), _number(rec, "score_rejected")
        margin = None if sc is None or sr is None else sc - sr
    gap = _number(rec, "rank_gap")
    return [{"prompt": prompt, "chosen": chosen, "rejected": rejected, "group": _group(prompt),
             "rank_gap": None if gap is None else int(gap), "margin": margin}]


def ranking(rec: dict) -> dict:
    """-> {"prompt": [msgs], "responses": [str], "ranking": [int] (best first), "groups": [[int]] (tiers
    best first: tied answers share one)}; every index at most once."""
    for key in ("prompt", "responses", "ranking"):
        if key not in rec:
            raise BadRecord(f'K-way record without "{key}"')
    responses, order = rec["responses"], rec["ranking"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise BadRecord('"responses" must be a list of at least two answers')
    texts = []
    for i, r in enumerate(responses):
        if isinstance(r, list):  # a one-message answer given as a message list
            r = "".join(m["content"] for m in messages(r, f"responses[{i}]", default_role="assistant"))
        texts.append(_text(r, f"responses[{i}]"))
    groups = ranking_groups(order)
    flat = [i for g in groups for i in g]
    bad = [i for i in flat if not 0 <= i < len(texts)]
    if bad:
        raise BadRecord(f'"ranking" has out-of-range indices {bad} for {len(texts)} responses')
    if len(set(flat)) != len(flat):
        raise BadRecord('"ranking" repeats an index (give each answer once; tied answers go in one group, '
                        'e.g. [[2], [0, 3], [1]])')
    if len(flat) < 2:
        raise BadRecord('"ranking" must order at least two responses')
    if len(groups) < 2:
        raise Drop("K-way: every answer tied")
    return {"prompt": messages(rec["prompt"], "prompt"), "responses": texts, "ranking": flat, "groups": groups}


def _is_index(i) -> bool:
    return isinstance(i, int) and not isinstance(i, bool)


def ranking_groups(order) -> list[list[int]]:
    """A ranking as tiers best first: [2, 0, 3, 1] -> [[2], [0], [3], [1]]; with ties, a list of
    groups [[2], [0, 3], [1]] (0 and 3 tied) stays as it is (a bare index is a group of one)."""
    if not isinstance(order, list) or not order:
        raise BadRecord('"ranking" must be a list of response indices, best first (ties: a list of groups)')
    groups = []
    for g in order:
        if _is_index(g):
            groups.append([g])
        elif isinstance(g, list) and g and all(_is_index(i) for i in g):
            groups.append(list(g))
        else:
            raise BadRecord('"ranking" must be a list of response indices, best first, or of groups of tied '
                            f"indices such as [[2], [0, 3], [1]]; found {g!r}")
    return groups


def prompt(rec: dict) -> dict:
    """-> {"prompt": [msgs ending with a user turn], "gold": str | None}. The gold (reference) answer
    is "gold", else what the record offers as the answer: a completion, the chosen answer, a
    trailing assistant turn."""
    gold = rec.get("gold")
    if "prompt" in rec:
        msgs = prompt_messages(rec["prompt"])
        for key in ("completion", "chosen", "messages"):  # TL;DR, UltraFeedback / TL;DR pairs, no_robots
            if gold is None and rec.get(key) not in (None, "", []):
                gold = _answer_text(_strip_prompt(msgs, messages(rec[key], key, default_role="assistant")))
    elif "chosen" in rec:  # a preference transcript without a prompt field (HH, chosen message lists)
        msgs = conversation(rec["chosen"], "chosen")
        if msgs[-1]["role"] == "assistant":
            gold = gold if gold is not None else _answer_text(msgs[-1:])
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise Drop("no user turn before the last assistant turn")
    elif "messages" in rec:
        msgs = messages(rec["messages"], "messages")
        if msgs[-1]["role"] == "assistant" and len(msgs) > 1:
            gold = gold if gold is not None else msgs[-1]["content"]
            msgs = msgs[:-1]
    elif "instruction" in rec:
        msgs = [{"role": "user", "content": alpaca_prompt(rec)}]
        gold = gold if gold is not None else rec.get("output")
    else:
        raise BadRecord(f"no known prompt fields (found: {', '.join(sorted(rec)) or 'none'})")
    if msgs[-1]["role"] != "user":
        raise BadRecord("the prompt must end with a user message")
    if not str(msgs[-1]["content"]).strip():
        raise Drop("empty or whitespace-only prompt")  # nothing to answer: dropped and counted
    if gold is not None and not isinstance(gold, str):
        raise BadRecord('"gold" must be a string')
    return {"prompt": msgs, "gold": gold}
