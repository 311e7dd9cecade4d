"""Preference data for the reward stage: where it comes from, the held-out split, tokenised
pairs with counts of what was dropped, and the prompt-grouped sampler (InstructGPT).

Parsing (pairwise files, HH transcripts, K-way expansion, validation) lives in data.loaders;
this module turns its records into what RewardTrainer consumes: `chosen_ids`/`rejected_ids`
encoded exactly as pipeline.judge.scoring scores conversations.

Pairs stay on disk, as SFT's conversations do: a file's pairs are a memory-mapped Arrow file
(data.record_cache, under the run's cache folder), the held-out split an index over it, and the
encoding a batched `Dataset.map` written beside it (reused by a rerun with the same tokenizer and
settings), so a 200 MB preference file never becomes Python lists of token ids. The order of the
pairs, their encoding and prompt groups are those of the list path before (tests/test_data_streaming.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import Sampler

from pipeline.errors import UserError
from pipeline.graph.rounds import reward_parts
from pipeline.judge.scoring import as_messages, encode_conversation
from stages.reward.heldout import Heldout, evaluate_heldout, heldout_from_pairs, heldout_from_rankings

if TYPE_CHECKING:
    from datasets import Dataset

log = logging.getLogger(__name__)

# Without a `margin` column, use_margin derives one from the rank distance: K-way pairs ranked
# further apart must be separated by more (the Llama 2 margin idea with ranks as strength).
MARGIN_PER_RANK = 0.5


RANK_SOURCE = re.compile(r"rank(-r\d+)?")  # this run's rank stage artifacts: rank, rank-r2, ...


def data_parts(cfg) -> list[str]:
    """reward.data split at "+": demo, rank, rank-r2, feedback or files, e.g. demo+rank (the default)."""
    parts = reward_parts(cfg)
    if not all(parts):
        raise UserError(f"reward.data={cfg.reward.data!r} has an empty part; join sources with '+', "
                        "e.g. demo+rank or demo+rank+rank-r2.")
    return parts


def training_sources(cfg) -> list[str]:
    """The files of reward.data's parts (demo, rank, rank-r2, files), as pipeline/chain/table.py declares them."""
    from data.demo import input_path
    from pipeline.chain.inputs import reward_data_inputs

    data_parts(cfg)  # an empty part is one clear line
    return [input_path(cfg, inp) for name, inp in reward_data_inputs(cfg).items() if name != "heldout"]


def heldout_source(cfg) -> str | None:
    """reward.val_data; else the demo's held-out rankings when the demo is trained on; else the first rank
    artifact's held-out own-answer rankings; else None (a share of the training prompts is held out)."""
    from data.demo import input_path
    from pipeline.chain.inputs import reward_data_inputs

    inputs = reward_data_inputs(cfg)
    if "heldout" in inputs:
        return input_path(cfg, inputs["heldout"])
    ranks = [inp for name, inp in inputs.items() if RANK_SOURCE.fullmatch(name)]
    return input_path(cfg, ranks[0], "heldout_rankings.jsonl") if ranks else None


def load_training_pairs(sources: list[str], cache: str | Path | None = None) -> Dataset:
    """Pairs of every source as one Dataset: a file's are memory-mapped Arrow under `cache` (data.record_cache;
    in memory without one), a feedback store's are built from its rankings. A prompt's pairs from different
    sources form separate groups (their answers differ: the prepared candidates and the model's own). An
    empty source beside others (a rank stage whose answers all tied) is skipped with a warning."""
    from datasets import concatenate_datasets

    from data.feedback import feedback_pairs, is_store
    from data.loaders import PAIRS, load_pairs
    from data.record_cache import PAIRS_PREFIX, cached_records
    from data.token_cache import prune_cache

    parts = []
    for n, source in enumerate(sources):
        if len(sources) > 1 and Path(source).is_file() and Path(source).stat().st_size == 0:
            log.warning("%s is empty (no prompt was ranked: see the report beside it); training on the other "
                        "sources.", source)
            continue
        if is_store(source):
            pairs = pair_dataset(feedback_pairs(source))
        else:
            pairs = cached_records(source, PAIRS, cache) if cache is not None else pair_dataset(load_pairs(source))
        parts.append(_prefixed_groups(pairs, f"{n}:") if len(sources) > 1 else pairs)
    if not parts:
        raise UserError(f"{' + '.join(sources)} holds no usable preference pair; see data/README.md for the accepted "
                        "formats.")
    if cache is not None:
        entries = {Path(f["filename"]).parent for part in parts for f in part.cache_files}
        prune_cache(cache, sorted(entries), kinds=(PAIRS_PREFIX,), log=log.info)
    return parts[0] if len(parts) == 1 else concatenate_datasets(parts)


def pair_dataset(pairs: list[dict]) -> Dataset:
    """Pairs held in memory (a feedback store's, a test's) in the record cache's layout; an answer given as
    text becomes one assistant message, as scoring reads it."""
    from datasets import Dataset

    from data.loaders import PAIRS
    from data.record_cache import features

    return Dataset.from_list([{"prompt": list(p["prompt"]), "chosen": as_messages(p["chosen"]),
                               "rejected": as_messages(p["rejected"]), "group": _group_key(p),
                               "rank_gap": p.get("rank_gap"), "margin": p.get("margin")} for p in pairs],
                             features=features(PAIRS))


def _prefixed_groups(pairs: Dataset, prefix: str) -> Dataset:
    """The pairs with `prefix` before each group key, computed in Arrow (the other columns stay mapped)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = pc.binary_join_element_wise(pa.scalar(prefix), _group_column(pairs), "")
    fingerprint = hashlib.sha256(f"{pairs._fingerprint}:{prefix}".encode()).hexdigest()[:16]
    return pairs.remove_columns("group").add_column("group", keys, new_fingerprint=fingerprint)


def _group_column(pairs: Dataset):
    """Every pair's group key as one Arrow array (never a Python string per pair). For a file's records, not a
    selection of them: datasets gathers a selection's rows one by one (2 GiB on 200 MB of pairs)."""
    return pairs.select_columns(["group"]).with_format("arrow")[:]["group"].combine_chunks()


def feedback_report(sources: list[str], model, tokenizer, *, max_length: int, batch_size: int) -> dict | None:
    """The feedback store's counts (data/feedback.py) and, when it has enough rankings, the reward model's
    metrics on its held-out conversations (never trained on); None when reward.data has no feedback."""
    from data.feedback import feedback_data, is_store

    store = next((s for s in sources if is_store(s)), None)
    if store is None:
        return None
    data = feedback_data(store)
    out = dict(data.counts)
    ranked = [r for r in data.heldout_rankings if len(r["groups"]) > 1]  # an all-tied ranking has no pair
    if ranked:
        out["heldout"] = evaluate_heldout(model, tokenizer, heldout_from_rankings(ranked), max_length=max_length,
                                          batch_size=batch_size)[0]
    return out


def load_heldout(source: str) -> Heldout:
    """K-way rankings keep their full order (for rank correlation); anything else is read as pairs."""
    from data.loaders import load_pairs, load_rankings

    try:
        records = load_rankings(source)
    except UserError:
        records = None
    h = heldout_from_rankings(records) if records else heldout_from_pairs(load_pairs(source))
    if not h.pairs:
        raise UserError(f"{source} holds no usable held-out pair; see data/README.md for the accepted formats.")
    return h


def split_by_group(pairs: Dataset | list[dict], fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Hold out a share of prompts (whole groups, so no prompt is in both halves); both halves keep the
    pairs' order."""
    import pyarrow as pa
    import pyarrow.compute as pc

    pairs = pair_dataset(pairs) if isinstance(pairs, list) else pairs
    keys = _group_column(pairs)
    groups = sorted(pc.unique(keys).to_pylist())
    if len(groups) < 2 or fraction <= 0:
        raise UserError(
            f"cannot hold out {fraction:.0%} of {len(groups)} prompt(s) for evaluation: give reward.val_data "
            "or more data."
        )
    random.Random(seed).shuffle(groups)
    held = pa.array(groups[: max(1, round(len(groups) * fraction))], type=keys.type)
    is_held = pc.is_in(keys, value_set=held).to_numpy(zero_copy_only=False)
    return (pairs.select(np.flatnonzero(~is_held), keep_in_memory=True),
            pairs.select(np.flatnonzero(is_held), keep_in_memory=True))


def _group_key(pair: dict) -> str:
    return str(pair.get("group") or pair["prompt"])


# What encoding made of each pair (the "status" column): kept below IDENTICAL, dropped from it.
KEPT, TRUNCATED, IDENTICAL, TOO_LONG = 0, 1, 2, 3
_LAYOUT = 2  # bump when the encoded columns change: older cached encodings are then never read


@dataclass
class PairData:
    """The kept pairs, encoded, in the order they were read; each one's prompt index; what was dropped."""

    encoded: Dataset  # chosen_ids, rejected_ids, margin: beside the mapped records, or in memory
    groups: list[int]  # prompt index of each pair (numbered in order of first appearance)
    counts: dict

    def columns(self, use_margin: bool) -> list[str]:
        return ["chosen_ids", "rejected_ids"] + (["margin"] if use_margin else [])

    def dataset(self, use_margin: bool) -> Dataset:
        """What RewardTrainer trains on."""
        return self.encoded.select_columns(self.columns(use_margin))

    # whole columns as lists: for small sets (tests, one pair's check), never the training set
    @property
    def chosen_ids(self) -> list[list[int]]:
        return self.encoded[:]["chosen_ids"]

    @property
    def rejected_ids(self) -> list[list[int]]:
        return self.encoded[:]["rejected_ids"]

    @property
    def margins(self) -> list[float]:
        return self.encoded[:]["margin"]

    def __len__(self) -> int:
        return len(self.encoded)


def _encode_batch(batch: dict, tokenizer, max_length: int, use_margin: bool, source: str) -> dict:
    # the group keys are carried along: read back from the written file, never gathered from a selection
    out = {"chosen_ids": [], "rejected_ids": [], "margin": [], "status": [], "margin_from_rank": [],
           "group": batch["group"]}
    for prompt, chosen_msgs, rejected_msgs, gap, margin in zip(batch["prompt"], batch["chosen"], batch["rejected"],
                                                               batch["rank_gap"], batch["margin"]):
        chosen, c_status = encode_conversation(tokenizer, prompt, chosen_msgs, max_length)
        rejected, r_status = encode_conversation(tokenizer, prompt, rejected_msgs, max_length)
        from_rank = 0
        if chosen == rejected:
            status = IDENTICAL
        elif "too_long" in (c_status, r_status):
            status = TOO_LONG
        else:
            status = TRUNCATED if "truncated" in (c_status, r_status) else KEPT
            if use_margin and margin is None:
                if gap is None:
                    raise UserError(
                        f"reward.use_margin=true but a pair in {source} has neither a `margin` nor a rank "
                        "distance (K-way data); add a margin column or set reward.use_margin=false."
                    )
                margin, from_rank = MARGIN_PER_RANK * (int(gap) - 1), 1
        if status >= IDENTICAL:
            chosen, rejected = [], []  # dropped: not stored
        out["chosen_ids"].append(chosen)
        out["rejected_ids"].append(rejected)
        out["margin"].append(float(margin) if use_margin and margin is not None else None)
        out["status"].append(status)
        out["margin_from_rank"].append(from_rank)
    return out


def _encoding_cache_file(pairs: Dataset, tokenizer, max_length: int, use_margin: bool) -> tuple[str, str | None]:
    """(fingerprint of the encoding, the file to keep it in: beside the mapped records, None when they are
    in memory). The records' fingerprint follows their files and selection (the held-out split)."""
    from data.token_cache import tokenizer_fingerprint

    template = json.dumps(tokenizer.chat_template, sort_keys=True)
    key = hashlib.sha256(json.dumps([_LAYOUT, pairs._fingerprint, tokenizer_fingerprint(tokenizer), template,
                                     max_length, use_margin]).encode()).hexdigest()[:16]
    files = pairs.cache_files
    return key, str(Path(files[0]["filename"]).parent / f"encoded-{key}.arrow") if files else None


def tokenize_pairs(pairs: Dataset | list[dict], tokenizer, max_length: int, *, use_margin: bool,
                   source: str) -> PairData:
    """Encode every pair (a batched `Dataset.map`, written beside mapped records and reused by a rerun with
    the same tokenizer and settings); drop (and count) pairs whose two sides encode identically and pairs
    whose response alone exceeds max_length; count pairs whose prompt lost its oldest tokens."""
    import pyarrow.compute as pc
    from datasets import Features, List, Value

    from data.record_cache import map_processes, tokenizer_threads_off

    pairs = pair_dataset(pairs) if isinstance(pairs, list) else pairs
    key, cache_file = _encoding_cache_file(pairs, tokenizer, max_length, use_margin)
    ids = List(Value("int32"))
    features = Features({"chosen_ids": ids, "rejected_ids": ids, "margin": Value("float64"),
                         "status": Value("int8"), "margin_from_rank": Value("int8"), "group": Value("string")})
    procs = map_processes(len(pairs))
    with tokenizer_threads_off(procs > 1):
        encoded = pairs.map(_encode_batch, batched=True, features=features, remove_columns=pairs.column_names,
                            cache_file_name=cache_file, new_fingerprint=key, num_proc=procs if procs > 1 else None,
                            desc="encoding preference pairs",
                            fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "use_margin": use_margin,
                                       "source": source})
    columns = encoded.with_format("numpy", columns=["status", "margin_from_rank"])[:]  # whole columns at once
    status = columns["status"]
    kept = np.flatnonzero(status < IDENTICAL)
    groups = pc.dictionary_encode(_group_column(encoded).take(kept)).indices.to_numpy(zero_copy_only=False)
    c = {"pairs_in": len(status), "kept": len(kept), "identical": int((status == IDENTICAL).sum()),
         "truncated": int((status == TRUNCATED).sum()), "too_long": int((status == TOO_LONG).sum()),
         "prompts": int(groups.max()) + 1 if len(groups) else 0}
    out = PairData(encoded.select(kept, keep_in_memory=True), groups.tolist(), c)
    if c["identical"] or c["too_long"] or c["truncated"]:
        log.warning(
            "%s: %d of %d pairs kept; dropped %d with chosen == rejected and %d whose response is longer than "
            "reward.max_length=%d tokens; %d had their prompt shortened from the left to fit.",
            source, c["kept"], c["pairs_in"], c["identical"], c["too_long"], max_length, c["truncated"],
        )
    if margin_from_rank := int(columns["margin_from_rank"].sum()):
        log.warning("%s: %d pairs have no margin column; using %.1f x (rank distance - 1).",
                    source, margin_from_rank, MARGIN_PER_RANK)
    if not len(out):
        raise UserError(
            f"{source} has no usable preference pair after filtering ({c['pairs_in']} read: {c['identical']} with "
            f"chosen == rejected, {c['too_long']} longer than reward.max_length={max_length} tokens). "
            "Fix the data or raise reward.max_length."
        )
    return out


def straddling_batches(groups: list[int], batch_size: int) -> str | None:
    """Why whole prompts will not fill batches exactly, when every prompt has the same number of pairs and
    batch_size is not a multiple of it; None otherwise (mixed counts, as prepared K=4 rankings beside
    own answers with ties, straddle batches whatever the size, and that is no mistake to warn about)."""
    sizes = set(Counter(groups).values())
    if len(sizes) != 1 or (size := sizes.pop()) <= 1 or batch_size % size == 0:
        return None
    return (f"batch_size={batch_size} is not a multiple of the {size} pairs per prompt, so some prompts' pairs "
            "straddle two batches.")


class GroupedPairSampler(Sampler):
    """Pairs of one prompt next to each other, prompts in a random order, so a batch holds whole
    prompts' comparisons (exactly when the batch size is a multiple of the pairs per prompt).

    InstructGPT trains on all K(K-1)/2 comparisons of a prompt as one batch element: shuffled
    independently, the same K answers are seen in many batches and the model overfits them."""

    def __init__(self, groups: list[int], seed: int):
        self.members: dict[int, list[int]] = {}
        for i, g in enumerate(groups):
            self.members.setdefault(g, []).append(i)
        self.n = len(groups)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        keys = list(self.members)
        for k in torch.randperm(len(keys), generator=gen).tolist():
            idx = self.members[keys[k]]
            for j in torch.randperm(len(idx), generator=gen).tolist():
                yield idx[j]

    def __len__(self) -> int:
        return self.n

