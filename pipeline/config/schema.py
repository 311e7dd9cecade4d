"""The typed configuration of a run: one dataclass per YAML section, defaults documented.

Every stage reads the same `RunConfig`; a preset (configs/*.yaml) sets only what differs.
Paths left empty are derived from `run.out_dir/run.name/<stage>` so stages chain by default.
`@limits` above a section declares the allowed range of its numbers (every number must also be finite).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config.loader import limits
from pipeline.errors import UserError
from pipeline.config.schema_align import AlignSection, DPOSection, GRPOSection, RLOOSection
from pipeline.config.schema_lora import LoraSection


@dataclass
class RunSection:
    name: str = "run"  # defaults to the preset's file name: runs/<name>/...
    out_dir: str = "runs"
    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on capable GPUs, fp32 on CPU
    compile: bool = False  # torch.compile the model (pays off on GPU; nothing on CPU)
    # rank -> reward -> PPO rounds (pipeline/graph/rounds.py): `make ppo` runs rounds 1..rounds; round N>1 ranks
    # round N-1's PPO answers and writes rank-rN, reward-rN, ppo-rN. Eval, compare, chat and serve use the
    # newest round up to `rounds` whose PPO model is finished.
    rounds: int = 1
    round: int | None = None  # the round a rank/reward/ppo command belongs to (the Makefile sets it); None: 1

    def validate(self) -> None:
        for key, value in (("rounds", self.rounds), ("round", self.round)):
            if value is not None and value < 1:
                raise UserError(f"run.{key}={value}: rounds are numbered from 1.")
        if Path(self.out_dir).is_file():
            raise UserError(f"run.out_dir={self.out_dir}: an existing file; the runs go in a folder there.")
        if (Path(self.out_dir) / self.name).is_file():
            raise UserError(f"run.name={self.name}: {Path(self.out_dir) / self.name} is an existing file; the run "
                            "goes in a folder there.")


@dataclass
class DataSection:
    """The embedded demo data (data/demo): built from the docs that ship inside Python."""

    subset: Literal["common", "all"] = "common"  # common: everyday modules (~0.6 MB of text); all: the stdlib
    k: int = 4  # candidate answers per ranking prompt (2-6), graded best to worst
    seed: int = 0
    dir: str | None = None  # default runs/<name>/data
    answer_words: int = 40  # gold answers are cut to whole sentences within this many words
    val_docs: float = 0.05  # share of documents held out for validation loss (never asked about)

    def validate(self) -> None:
        if not 2 <= self.k <= 6:
            raise UserError(f"data.k={self.k}: the demo builds 2 to 6 graded candidates per prompt.")
        if self.answer_words < 8:
            raise UserError(f"data.answer_words={self.answer_words} is too short for an answer; use 8 or more.")
        if not 0.0 < self.val_docs < 0.5:
            raise UserError(f"data.val_docs={self.val_docs} must be between 0 and 0.5.")


@limits(vocab_size="> 0", min_frequency=">= 0")
@dataclass
class TokenizerSection:
    kind: Literal["bpe", "word"] = "bpe"  # byte-level BPE, or whole words and punctuation (unknown words: <|unk|>)
    vocab_size: int = 4096  # the whole vocabulary, special tokens included
    min_frequency: int = 2
    from_: str | None = None  # reuse an existing tokenizer (path or hub name) instead of training one

    def validate(self) -> None:
        if self.kind == "word" and self.from_:
            raise UserError("tokenizer.kind=word trains a word vocabulary, tokenizer.from reuses a tokenizer: "
                            "set only one of them.")


@limits(n_layer="> 0", n_head="> 0", n_kv_head="> 0", n_embd="> 0", intermediate_size="> 0",
        block_size="> 0", max_position_embeddings="> 0", rope_theta="> 0", dropout="[0, 1)")
@dataclass
class ModelSection:
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # grouped-query attention; None = n_head
    n_embd: int = 128
    intermediate_size: int | None = None  # SwiGLU width; None = ~8/3 * n_embd rounded up to 32
    block_size: int = 256  # context length used in training
    max_position_embeddings: int | None = None  # None = block_size
    tie_embeddings: bool = True
    rope_theta: float = 10000.0
    dropout: float = 0.0
    init_from: str | None = None  # start from an existing causal LM (path or hub name)
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = "sdpa"

    def validate(self) -> None:
        if self.n_embd % self.n_head:
            raise UserError(
                f"model.n_embd={self.n_embd} is not divisible by model.n_head={self.n_head}; "
                "pick a width that is a multiple of the number of heads."
            )
        kv = self.n_kv_head or self.n_head
        if self.n_head % kv:
            raise UserError(f"model.n_head={self.n_head} is not divisible by model.n_kv_head={kv}.")
        if (self.n_embd // self.n_head) % 2:
            raise UserError(f"head size n_embd/n_head={self.n_embd // self.n_head} must be even for RoPE.")
        if self.max_position_embeddings and self.block_size > self.max_position_embeddings:
            raise UserError(
                f"model.block_size={self.block_size} is over model.max_position_embeddings="
                f"{self.max_position_embeddings}; lower block_size or raise the maximum."
            )


@limits(val_fraction="[0, 1)", batch_size="> 0", tokens_per_step="> 0", max_steps="> 0", lr="> 0",
        min_lr=">= 0", warmup_steps=">= 0", weight_decay=">= 0", beta1="[0, 1)", beta2="[0, 1)", grad_clip="> 0",
        eval_every="> 0", eval_batches="> 0", log_every="> 0", checkpoint_every="> 0", sample_temperatures=">= 0",
        sample_tokens=">= 0")
@dataclass
class TrainSection:
    """Pretraining: next-token prediction on raw text."""

    data: list[str] = field(default_factory=lambda: ["demo"])  # .txt/.jsonl/.parquet files, dirs, globs, hub names
    text_field: str = "text"
    val_fraction: float = 0.05  # held-out share of documents when the data has no validation split
    batch_size: int = 12  # sequences per micro-batch (per process)
    tokens_per_step: int | None = None  # global tokens per optimizer step; sets gradient accumulation
    max_steps: int = 1000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0
    eval_every: int = 250
    eval_batches: int = 20
    log_every: int = 10
    checkpoint_every: int = 250
    resume: bool = True  # continue from the last checkpoint if one exists
    sample_temperatures: list[float] = field(default_factory=lambda: [0.0, 0.7, 1.0])
    sample_tokens: int = 120


@limits(val_fraction="[0, 1)", max_length="> 0", lr="> 0", epochs="> 0", max_steps="> 0 | -1", batch_size="> 0",
        grad_accum="> 0", warmup_ratio="[0, 1)", weight_decay=">= 0", eval_every="> 0", log_every="> 0",
        save_every="> 0", num_samples=">= 0", gold_prompts=">= 0",
        max_new_tokens="> 0")
@dataclass
class SFTSection:
    init_from: str | None = None  # default runs/<name>/pretrain; any HF causal LM dir or hub name
    data: str = "demo"  # demo, a local file (.jsonl/.json/.parquet/.csv, .gz) or a hub name
    val_data: str | None = None  # default: the demo's validation split, or a share of `data`
    val_fraction: float = 0.05
    max_length: int = 256
    packing: bool = False  # pack conversations into max_length rows (attention kept within each one)
    # loss on the assistant's tokens only; false trains on whole conversations (for a chat template whose
    # assistant turns cannot be marked: pipeline/lm/chat_format.py)
    assistant_only_loss: bool = True
    lr: float = 5e-4
    epochs: float = 3.0
    max_steps: int = -1  # >0 overrides epochs
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    eval_every: int = 100
    log_every: int = 10
    save_every: int = 200
    resume: bool = True
    num_samples: int = 8  # held-out prompts answered into samples.md
    gold_prompts: int = 64  # held-out prompts whose greedy answers get the gold-metric score
    max_new_tokens: int = 64  # answer length for samples.md and the gold score
    lora: LoraSection = field(default_factory=LoraSection)
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, more time


@limits(k="> 0", max_new_tokens="> 0", batch_size="> 0", chunk_prompts="> 0", noise=">= 0", port=">= 0")
@dataclass
class RankSection:
    """Ranking the policy's own answers (issue 12): K samples per prompt, ordered by a labeler.

    Writes runs/<name>/rank (round 1) or runs/<name>/rank-r<N> (run.round); the reward stage trains on it."""

    policy: str | None = None  # whose answers are ranked; default runs/<name>/sft in round 1, the previous
    # round's PPO model in round N>1 (run.round); set without run.round, it is round 2 (runs/<name>/rank-r2)
    prompts: str = "demo"  # demo: the reward training rankings' prompts; or a file with `prompt` (+ `gold`)
    heldout_prompts: str = "demo"  # prompts ranked by gold (no noise) for the reward report, never trained on;
    # demo: the held-out reward prompts; "none" skips
    num_prompts: int | None = None  # labeling prompts used (the first N); None = all
    num_heldout_prompts: int | None = None
    k: int = 4  # answers sampled per prompt (identical ones are merged)
    temperatures: list[float] = field(default_factory=lambda: [0.7, 0.9, 1.1, 1.3])  # answer j: temperatures[j % n]
    max_new_tokens: int = 48  # = ppo.max_new_tokens: rank answers like the ones PPO will write
    batch_size: int = 64  # prompts sampled together
    chunk_prompts: int = 128  # prompts per saved chunk of candidates (what a killed run keeps)
    labeler: Literal["gold", "human", "judge"] = "gold"  # gold: simulated person (gold metric + noise)
    noise: float = 0.07  # gold labeler: Plackett-Luce temperature on gold scores (0 = the exact gold order);
    # 0.07 puts ~84% of pairs in the gold order, so two simulated people agree on ~73%, as InstructGPT's labelers did
    judge: str | None = None  # labeler=judge: a reward model dir, or a causal LM (mean log-prob of the answer)
    ui: Literal["browser", "terminal"] = "browser"  # labeler=human
    host: str = "127.0.0.1"  # the labeling page binds here; change deliberately
    port: int = 0  # 0 = a free port
    labeler_name: str = "you"  # labeler=human: whose labels (runs/<name>/labels/<labeler_name>.jsonl)
    resume: bool = True

    def validate(self) -> None:
        if not 2 <= self.k <= 16:
            raise UserError(f"rank.k={self.k}: sample 2 to 16 answers per prompt.")
        if not self.temperatures or any(t <= 0 for t in self.temperatures):
            raise UserError(f"rank.temperatures={self.temperatures}: give one or more temperatures above 0.")
        if self.noise < 0:
            raise UserError(f"rank.noise={self.noise} must be 0 (exact gold order) or more.")
        if self.labeler == "judge" and not self.judge:
            raise UserError("rank.labeler=judge needs rank.judge=DIR (a reward model or a causal LM).")
        for key in ("max_new_tokens", "batch_size", "chunk_prompts"):
            if getattr(self, key) <= 0:
                raise UserError(f"rank.{key} must be positive, got {getattr(self, key)}.")
        if not re.fullmatch(r"[\w.-]+", self.labeler_name):
            raise UserError(f"rank.labeler_name={self.labeler_name!r}: use letters, digits, '.', '_' or '-'.")


@limits(val_fraction="[0, 1)", max_length="> 0", lr="> 0", epochs="> 0", max_steps="> 0 | -1", batch_size="> 0",
        grad_accum="> 0", warmup_ratio="[0, 1)", weight_decay=">= 0", eval_every="> 0", log_every="> 0",
        save_every="> 0", center_rewards_coefficient=">= 0",
        stats_prompts=">= 0")
@dataclass
class RewardSection:
    init_from: str | None = None  # default runs/<name>/sft
    # "+"-joined sources: demo (prepared rankings), rank (this run's ranked own answers), rank-r2 (round 2),
    # or files: pairwise, HH transcripts or K-way rankings (see data/README.md)
    data: str = "demo+rank"
    val_data: str | None = None
    val_fraction: float = 0.1
    max_length: int = 256
    lr: float = 1e-4
    epochs: float = 2.0
    max_steps: int = -1
    batch_size: int = 16
    grad_accum: int = 1
    warmup_ratio: float = 0.05
    weight_decay: float = 0.0
    use_margin: bool = False  # use a `margin` column in the loss when the data has one
    center_rewards_coefficient: float | None = None  # auxiliary loss pulling rewards to zero mean
    group_by_prompt: bool = True  # K-way: keep one prompt's pairs in the same batch (InstructGPT)
    eval_every: int = 100
    log_every: int = 10
    save_every: int = 200
    resume: bool = True
    stats_prompts: int = 64  # SFT samples scored after training for PPO's reward normalisation
    lora: LoraSection = field(default_factory=LoraSection)
    gradient_checkpointing: bool = False  # recompute activations in the backward: less memory, more time


@limits(num_eval_prompts=">= 0", report_prompts="> 0", report_samples="> 0", total_episodes="> 0",
        batch_size="> 0", num_minibatches="> 0", ppo_epochs="> 0", grad_accum="> 0", lr="> 0", max_new_tokens="> 0",
        max_prompt_length="> 0", temperature="> 0", top_k=">= 0", top_p="(0, 1]", kl_coef=">= 0", target_kl="> 0",
        kl_horizon="> 0", kl_budget=">= 0", gamma="[0, 1]", lam="[0, 1]", cliprange="> 0", cliprange_value="> 0",
        vf_coef=">= 0", reward_clip="> 0", max_grad_norm="> 0", forward_batch_size="> 0",
        generation_batch_size="> 0", sample_every="> 0", log_every="> 0", save_every="> 0")
@dataclass
class PPOSection:
    policy: str | None = None  # default runs/<name>/sft (also the frozen reference)
    reward_model: str | None = None  # default runs/<name>/reward
    value_model: str | None = None  # default: initialised from the reward model
    data: str = "demo"  # prompts: demo, or a file/hub name with a `prompt` field (string or messages)
    eval_data: str | None = None  # development prompts (+ gold) the stage reports on; default: demo's ppo_dev, or the last prompts of data
    num_eval_prompts: int = 64  # development prompts answered into samples.md (with RM and gold scores) while training
    report_prompts: int | None = None  # development prompts of the final PPO-vs-SFT report; None = all of them
    report_samples: int = 2  # answers per prompt and model in that report; its intervals count prompts, not answers
    total_episodes: int = 2048
    batch_size: int = 64  # prompts per rollout (global)
    num_minibatches: int = 4
    ppo_epochs: int = 4
    grad_accum: int = 1  # micro-batches per minibatch
    lr: float = 3e-5
    max_new_tokens: int = 48
    max_prompt_length: int = 128
    temperature: float = 0.7
    top_k: int = 0
    top_p: float = 1.0
    kl_coef: float = 0.05
    kl_estimator: Literal["k1", "k3"] = "k1"
    adaptive_kl: bool = False
    target_kl: float = 6.0
    kl_horizon: int = 10000
    kl_budget: float = 10.0  # the quality bar's limit on mean KL(PPO||SFT) per answer
    gamma: float = 1.0
    lam: float = 0.95
    cliprange: float = 0.2
    cliprange_value: float = 0.2
    vf_coef: float = 0.1
    whiten_rewards: bool = False
    missing_eos_penalty: float | None = 1.0
    missing_eos_mode: Literal["subtract", "replace"] = "subtract"
    reward_clip: float | None = None
    max_grad_norm: float = 1.0
    forward_batch_size: int = 32  # micro-batch for no-grad forwards (reference, reward, value)
    generation_batch_size: int | None = None  # prompts sampled together; None = the whole rollout batch
    sample_every: int = 5  # rollouts between samples.md / held-out evaluations
    log_every: int = 1
    save_every: int = 10
    resume: bool = True
    lora: LoraSection = field(default_factory=LoraSection)
    # With LoRA, the value model: head = a scalar head on the policy's hidden states (one shared base,
    # the value loss also trains the adapters); base_head = a head on the base's (adapters off, only the
    # head trains); model = a separate value model from value_model / the reward model (a full copy).
    lora_value: Literal["head", "base_head", "model"] = "head"
    gradient_checkpointing: bool = False  # recompute each layer in the backward: less memory, ~30% more time
    check_memory: bool = True  # refuse before loading when the memory estimate exceeds what the device has free


@limits(lm_max_tokens="> 0", num_prompts="> 0", max_new_tokens="> 0", temperature=">= 0", top_k=">= 0",
        top_p="(0, 1]", batch_size="> 0", num_side_by_side=">= 0", length_tolerance=">= 0")
@dataclass
class EvalSection:
    """Compare models on held-out data; the last model listed is compared against the others."""

    models: list[str] = field(default_factory=list)  # default: this run's pretrain, sft and ppo (those that exist)
    reward_model: str | None = None  # default runs/<name>/reward if it exists; "none" skips RM scoring
    prompts: str | None = None  # default: the demo's evaluation prompts (with gold answers); "none": no answers
    lm_data: str = "demo"  # held-out text for loss/perplexity/bits per byte: demo, a file, "none", or
    # "pretrain": the documents pretraining held out of train.data
    lm_max_tokens: int = 32768  # held-out tokens scored per model
    num_prompts: int = 128
    max_new_tokens: int = 64
    temperature: float = 0.7  # also the temperature of the KL estimate (as in PPO's rollouts)
    top_k: int = 0
    top_p: float = 1.0
    batch_size: int = 32
    num_side_by_side: int = 10
    length_tolerance: float = 0.2  # "matched length": answers within 20% of each other's word count
    seed: int = 0



@dataclass
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    model: ModelSection = field(default_factory=ModelSection)
    train: TrainSection = field(default_factory=TrainSection)
    sft: SFTSection = field(default_factory=SFTSection)
    rank: RankSection = field(default_factory=RankSection)
    reward: RewardSection = field(default_factory=RewardSection)
    ppo: PPOSection = field(default_factory=PPOSection)
    eval: EvalSection = field(default_factory=EvalSection)
    align: AlignSection = field(default_factory=AlignSection)
    dpo: DPOSection = field(default_factory=DPOSection)
    grpo: GRPOSection = field(default_factory=GRPOSection)
    rloo: RLOOSection = field(default_factory=RLOOSection)

    def validate(self) -> None:
        from pipeline.graph.rounds import check_rounds

        check_rounds(self)  # across sections: what later rounds (run.rounds) cannot run with

    @property
    def run_dir(self) -> Path:
        return Path(self.run.out_dir) / self.run.name

    def stage_dir(self, stage: str) -> Path:
        """Where a stage's artifact lives: runs/<name>/<stage>."""
        return self.run_dir / stage

    @property
    def data_dir(self) -> Path:
        return Path(self.data.dir) if self.data.dir else self.stage_dir("data")
