"""Each stage declared once: its inputs, the config values that decide its artifact, its entry point.

A `Stage` is plain data. From a table of them (pipeline/chain/table.py holds ours) come:
  - make's prerequisites (`needs`): a stage builds the stages whose artifacts it reads, unless the config
    names another input (ppo.policy=DIR builds no SFT model);
  - the artifact's key (`stage_key`): the declared config values plus a record of every input (the
    manifest fingerprint of an artifact, the content hash of a data file), written into the manifest
    and into the resume work directory;
  - the up-to-date check (`up_to_date`): the finished artifact's key equals today's.
All of it reads only the config, manifests and input files: no torch, so `make ppo` on a finished run
answers in a fraction of a second.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.artifacts.store import MANIFEST, fingerprint, is_complete, read_manifest, source_fingerprint
from pipeline.graph.rounds import artifact_name, current_round, newest_artifact


@dataclass(frozen=True)
class Artifact:
    """An input that is another stage's artifact of this run, unless the config key `override` names
    another one (a stage artifact, any Hugging Face model directory, or a hub name)."""
    stage: str
    override: str | None = None  # a dotted config key, e.g. "ppo.policy"
    round_offset: int = 0  # loop stages: -1 reads the previous round's artifact (made by an earlier command)
    round_no: int | str | None = None  # loop stages: a fixed round, or "newest" (the newest finished one)
    optional: bool = False  # read when it exists; never built first
    value: str | None = None  # the override's value when it is not a plain key (an entry of eval.models)


@dataclass(frozen=True)
class Source:
    """A data source the stage reads: a file, folder, glob or hub dataset (the demo's files resolved)."""
    path: str
    key: str  # the config key that named it, for messages
    demo: bool = False  # one of the demo's files: built by the data stage


@dataclass(frozen=True)
class Stage:
    name: str  # the make target; the artifact's folder (per round for loop stages: ppo-r2)
    about: str  # one line for `make help`
    entry: str  # run as `python -m <entry>`
    config: Callable  # cfg -> {section: {key: value}}: the values that decide the artifact
    inputs: Callable  # cfg -> {name: Artifact | Source | None}
    args: tuple[str, ...] = ()  # fixed overrides of the entry (align.method=dpo)
    launch: bool = False  # a training stage: run under $(LAUNCH) (accelerate launch) by make
    loop: bool = False  # one artifact per RLHF round (rank-r2, reward-r2, ...)
    skip: Callable | None = None  # cfg -> why this target has no job in this config, or None
    finished: Callable | None = None  # manifest -> False when a complete artifact still has work (a person's)
    extra: Callable | None = None  # cfg -> more input records (e.g. the labels people wrote)
    after: bool = False  # reads whatever is finished and builds nothing first (eval, compare)


def artifact_dir(cfg, stage: Stage | str, round_no: int | None = None, *, loop: bool | None = None) -> Path:
    """Where a stage's artifact lives: runs/<name>/<stage>, or <stage>-rN in round N > 1 of a loop stage."""
    name = stage if isinstance(stage, str) else stage.name
    is_loop = loop if loop is not None else (not isinstance(stage, str) and stage.loop)
    return cfg.stage_dir(artifact_name(name, round_no or current_round(cfg)) if is_loop else name)


def value_of(cfg, dotted: str):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


def model_record(value: str | None, default_dir: Path) -> dict | None:
    """The record of a model input as the key holds it: the manifest fingerprint of a stage artifact,
    the content hash of another model directory, the name of a hub model; None when it is missing."""
    if value is None:  # this run's artifact: by name, so a copied or renamed run directory stays up to date
        m = read_manifest(default_dir)
        return {"artifact": default_dir.name, "fingerprint": m.get("fingerprint")} if is_complete(default_dir) else None
    p = Path(value)
    if p.exists():
        if (p / MANIFEST).exists():
            m = read_manifest(p)
            return {"path": str(p), "fingerprint": m.get("fingerprint")} if is_complete(p) else None
        return {"path": str(p), "fingerprint": fingerprint(p)}
    return {"hub": value}


def override_of(cfg, inp: Artifact) -> str | None:
    """The model or directory the config names instead of this run's artifact (None: the artifact)."""
    if inp.value is not None:
        return inp.value
    return value_of(cfg, inp.override) if inp.override else None


def default_dir(cfg, inp: Artifact, table: dict[str, Stage]) -> Path:
    """This run's artifact an input reads when the config names no other."""
    producer = table[inp.stage]
    if inp.round_no == "newest":
        return newest_artifact(cfg, inp.stage)
    return artifact_dir(cfg, producer, inp.round_no or current_round(cfg) + inp.round_offset)


def input_records(cfg, stage: Stage, table: dict[str, Stage]) -> dict:
    out = {}
    for name, inp in stage.inputs(cfg).items():
        if inp is None:
            continue
        if isinstance(inp, Artifact):
            out[name] = model_record(override_of(cfg, inp), default_dir(cfg, inp, table))
        elif inp.demo:  # by the demo file's name: the run directory may move
            out[name] = {f"demo:{Path(inp.path).name}": fingerprint(inp.path) if Path(inp.path).exists() else None}
        else:
            out[name] = {inp.path: source_fingerprint(inp.path)}
    if stage.extra:
        out.update(stage.extra(cfg))
    return out


def plain(value):
    """As it reads back from JSON (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(value, default=str))


def stage_key(cfg, stage: Stage, table: dict[str, Stage]) -> dict:
    """What decides the artifact: {"config": the declared values, "inputs": a record of each input}."""
    return plain({"config": stage.config(cfg), "inputs": input_records(cfg, stage, table)})


def up_to_date(cfg, stage: Stage, table: dict[str, Stage], key: dict | None = None) -> bool:
    """True when the stage's finished artifact was made with this key (and has no work left)."""
    final = artifact_dir(cfg, stage)
    manifest = read_manifest(final)
    if not manifest or manifest.get("status") != "complete":
        return False
    if stage.finished and not stage.finished(manifest):
        return False
    return manifest.get("key") == (key or stage_key(cfg, stage, table))


def is_prerequisite(cfg, inp: Artifact) -> bool:
    """An artifact input that make builds first: this round's, not optional, and not named otherwise."""
    this_round = inp.round_offset == 0 and inp.round_no in (None, current_round(cfg))
    return this_round and not inp.optional and override_of(cfg, inp) is None


def needs(cfg, table: dict[str, Stage]) -> dict[str, list[str]]:
    """{target: the targets make runs before it}: the producers of its artifact inputs that the config
    does not name otherwise, in the table's order, and the data stage when it reads a demo file."""
    order = list(table)
    out = {}
    for name, stage in table.items():
        wanted = set()
        no_job = stage.after or (stage.skip and stage.skip(cfg))  # a skipped target builds nothing first
        for inp in [] if no_job else stage.inputs(cfg).values():
            if isinstance(inp, Artifact) and is_prerequisite(cfg, inp):
                wanted.add(inp.stage)
            elif isinstance(inp, Source) and inp.demo:
                wanted.add("data")
        wanted.discard(name)
        out[name] = sorted(wanted, key=order.index)
    return out
