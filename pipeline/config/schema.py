"""The typed configuration of a run: one dataclass per YAML section, each key with its help and range.

Every stage reads the same `RunConfig`; a preset (configs/*.yaml) sets only what differs.
Paths left empty are derived from `run.out_dir/run.name/<stage>` so stages chain by default.
Each key is declared with `setting(default, help, range=...)` (pipeline/config/fields.py); `validate()`
holds only the checks that involve more than one key or more than a number's range.
docs/config.md is generated from these declarations: `python -m pipeline.config.docs > docs/config.md`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pipeline.config.fields import setting
from pipeline.config.schema_align import AlignSection, DPOSection, GRPOSection, RLOOSection
from pipeline.config.schema_lora import LoraSection
from pipeline.config.schema_rl import CompareSection, EvalSection, JudgeSection, PPOSection
from pipeline.errors import UserError

_RESUME = "continue an unfinished run made with the same settings from its last checkpoint"


@dataclass
class RunSection:
    """Where a run's artifacts go and what every stage shares: seed, device, precision, RLHF rounds."""

    name: str = setting("run", "the run's folder, runs/<name>/...; a preset's own file name unless set")
    out_dir: str = setting("runs", "the folder that holds the runs")
    seed: int = setting(1337, "random seed of every stage (initialisation, shuffling, sampling)",
                        range="[0, 4294967295]")  # what numpy's generator takes
    device: Literal["auto", "cpu", "cuda", "mps"] = setting("auto", "where to compute; auto: CUDA, else MPS, else CPU")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = setting(
        "auto", "compute precision; auto: bfloat16 on GPUs that have it, float32 on the CPU")
    compile: bool = setting(False, "torch.compile the model (pays off on a GPU; nothing on the CPU)")
    rounds: int = setting(1, "rank -> reward -> PPO rounds `make ppo` runs; round N > 1 writes rank-rN, reward-rN, "
                          "ppo-rN", range=">= 1")
    round: int | None = setting(None, "the round a rank, reward or ppo command belongs to (make sets it); null: 1, "
                                "or 2 with rank.policy", range=">= 1")

    def validate(self) -> None:
        check_run_name(self.name)
        if not str(self.out_dir).strip():
            raise UserError("run.out_dir is empty: name the folder that holds the runs (default: runs).")
        if "\x00" in str(self.out_dir):
            raise UserError(f"run.out_dir={self.out_dir!r} holds a NUL character, which no path can: name a folder.")
        check_no_links(Path(self.out_dir) / self.name)
        if Path(self.out_dir).is_file():
            raise UserError(f"run.out_dir={self.out_dir}: an existing file; the runs go in a folder there.")
        if (Path(self.out_dir) / self.name).is_file():
            raise UserError(f"run.name={self.name}: {Path(self.out_dir) / self.name} (run.out_dir/run.name) is an "
                            "existing file; the run goes in a folder there.")


def check_no_links(run_dir: Path) -> None:
    """Everything in a run folder is the pipeline's own: a symbolic link there (a lock, a work folder, an
    artifact, the cache; from an unpacked archive, say) would have a run write, truncate or delete what it
    points at, outside run.out_dir. (run.out_dir itself, or the run folder, may be a link: a bigger disk.)"""
    try:
        links = sorted(p for p in run_dir.iterdir() if p.is_symlink()) if run_dir.is_dir() else []
    except OSError:
        return  # unreadable: the stage's own write reports it (pipeline.errors.os_error_line)
    if links:
        raise UserError(f"{links[0]} is a symbolic link (to {os.readlink(links[0])}); a run writes only into files "
                        f"and folders it makes in {run_dir}: remove the link (and move what it points to there "
                        "if it is this run's).")


def check_run_name(name: str) -> None:
    """run.name is one folder inside run.out_dir: never empty, `.`, `..`, absolute or a path, so that every
    path a run writes (pipeline.config.schema.RunConfig.run_dir and what lies under it) stays inside out_dir."""
    text = str(name)
    if not text.strip() or text in (".", "..") or "/" in text or "\\" in text or Path(text).is_absolute() \
            or text != text.strip() or any(ord(c) < 32 for c in text):
        raise UserError(f"run.name={text!r}: a run's name is one folder name inside run.out_dir (letters, digits, "
                        "dots, dashes; no '/', not empty, '.' or '..'), e.g. run.name=tiny.")


@dataclass
class DataSection:
    """The embedded demo data (data/demo): built from the docs that ship inside Python."""

    subset: Literal["common", "all"] = setting("common", "common: everyday modules (~0.6 MB of text); all: the "
                                               "whole standard library")
    k: int = setting(4, "graded candidate answers per ranking prompt, best to worst", range="[2, 6]")
    seed: int = setting(0, "random seed of the demo's questions, candidates and splits")
    dir: str | None = setting(None, "where the demo data is written; null: runs/<name>/data")
    answer_words: int = setting(40, "gold answers are cut to whole sentences within this many words", range=">= 8")
    val_docs: float = setting(0.05, "share of documents held out for validation loss (never asked about)",
                              range="(0, 0.5)")


@dataclass
class TokenizerSection:
    """The tokenizer pretraining trains on train.data (or reuses)."""

    kind: Literal["bpe", "word"] = setting("bpe", "bpe: byte-level BPE; word: whole words and punctuation "
                                           "(unknown words become <|unk|>)")
    vocab_size: int = setting(4096, "tokens in the vocabulary, special tokens included", range="> 0")
    min_frequency: int = setting(2, "a merge or word enters the vocabulary only when seen this many times",
                                 range=">= 0")
    from_: str | None = setting(None, "reuse this tokenizer (a folder or hub name) instead of training one")

    def validate(self) -> None:
        if self.kind == "word" and self.from_:
            raise UserError("tokenizer.kind=word trains a word vocabulary, tokenizer.from reuses a tokenizer: "
                            "set only one of them.")


@dataclass
class ModelSection:
    """The shape of the Llama-style model pretraining builds (RoPE, SwiGLU, RMSNorm)."""

    n_layer: int = setting(4, "transformer blocks", range="> 0")
    n_head: int = setting(4, "attention heads per block", range="> 0")
    n_kv_head: int | None = setting(None, "key/value heads (grouped-query attention); null: n_head", range="> 0")
    n_embd: int = setting(128, "width of the residual stream (the hidden size)", range="> 0")
    intermediate_size: int | None = setting(None, "SwiGLU inner width; null: ~8/3 x n_embd rounded up to 32",
                                            range="> 0")
    block_size: int = setting(256, "context length in pretraining, in tokens", range="> 0")
    max_position_embeddings: int | None = setting(None, "the longest input the model takes, in tokens; null: "
                                                  "block_size", range="> 0")
    tie_embeddings: bool = setting(True, "the output layer shares the input embedding's weights")
    rope_theta: float = setting(10000.0, "base of the rotary position embedding's wavelengths", range="> 0")
    dropout: float = setting(0.0, "dropout probability in training", range="[0, 1)")
    init_from: str | None = setting(None, "start from this causal LM (a folder or hub name) instead of a new model")
    attn_implementation: Literal["sdpa", "eager", "flash_attention_2"] = setting(
        "sdpa", "attention kernel: sdpa (PyTorch's), eager (plain), or flash_attention_2 (CUDA)")

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
            raise UserError(f"head size model.n_embd/model.n_head={self.n_embd // self.n_head} must be even for "
                            "RoPE.")
        if self.max_position_embeddings and self.block_size > self.max_position_embeddings:
            raise UserError(
                f"model.block_size={self.block_size} is over model.max_position_embeddings="
                f"{self.max_position_embeddings}; lower block_size or raise the maximum."
            )


@dataclass
class TrainSection:
    """Pretraining: next-token prediction on raw text."""

    data: list[str] = setting(["demo"], "pretraining text: .txt/.jsonl/.parquet files, folders, globs, hub names; "
                              "demo: the demo's docs")
    text_field: str = setting("text", "the field that holds the text in .jsonl and .parquet records")
    val_fraction: float = setting(0.05, "share of documents held out for validation loss when the data has no "
                                  "validation split", range="[0, 1)")
    batch_size: int = setting(12, "most sequences per micro-batch on each process; accumulation makes up the "
                              "step", range="> 0")
    tokens_per_step: int | None = setting(None, "tokens per step over all processes (whatever their number), "
                                          "whole sequences; null: batch_size sequences", range="> 0")
    max_steps: int = setting(1000, "optimizer steps", range="> 0")
    lr: float = setting(1e-3, "peak learning rate, reached after the warmup", range="> 0")
    min_lr: float = setting(1e-4, "the learning rate the cosine decay ends at, at max_steps", range=">= 0")
    warmup_steps: int = setting(100, "steps of linear warmup up to lr", range=">= 0")
    weight_decay: float = setting(0.1, "AdamW weight decay", range=">= 0")
    beta1: float = setting(0.9, "AdamW's decay of its gradient average", range="[0, 1)")
    beta2: float = setting(0.99, "AdamW's decay of its squared-gradient average", range="[0, 1)")
    grad_clip: float = setting(1.0, "gradients are scaled down to at most this global norm", range="> 0")
    eval_every: int = setting(250, "steps between validation-loss estimates", range="> 0")
    eval_batches: int = setting(20, "micro-batches per validation-loss estimate", range="> 0")
    log_every: int = setting(10, "steps between logged training metrics", range="> 0")
    checkpoint_every: int = setting(250, "steps between checkpoints (what a killed run resumes from)", range="> 0")
    resume: bool = setting(True, _RESUME)
    sample_temperatures: list[float] = setting([0.0, 0.7, 1.0], "temperatures of the samples in samples.md "
                                               "(0: greedy)", range=">= 0")
    sample_tokens: int = setting(120, "new tokens per sample in samples.md", range=">= 0")


@dataclass
class SFTSection:
    """Supervised instruction tuning (TRL SFTTrainer) of the pretrained model on conversations."""

    init_from: str | None = setting(None, "the model SFT starts from (a causal LM folder or hub name); null: "
                                    "runs/<name>/pretrain")
    data: str = setting("demo", "conversations: demo, a local file (.jsonl/.json/.parquet/.csv, .gz) or a hub name")
    val_data: str | None = setting(None, "held-out conversations; null: the demo's validation split, or "
                                   "val_fraction of data")
    val_fraction: float = setting(0.05, "share of data held out when there is no val_data", range="[0, 1)")
    max_length: int = setting(256, "tokens per conversation: longer ones are cut (dropped when no answer is left)",
                              range="> 0")
    packing: bool = setting(False, "pack conversations into max_length rows (attention kept within each one)")
    assistant_only_loss: bool = setting(True, "loss on the assistant's tokens only; false: on whole conversations "
                                        "(for unmarkable templates)")
    lr: float = setting(5e-4, "peak learning rate (cosine decay after the warmup)", range="> 0")
    epochs: float = setting(3.0, "passes over the training conversations", range="> 0")
    max_steps: int = setting(-1, "optimizer steps; -1: as many as epochs take", range="> 0 | -1")
    sequences_per_step: int | None = setting(None, "conversations per step over all processes (whatever their "
                                             "number); null: batch_size x grad_accum", range="> 0")
    batch_size: int = setting(16, "most conversations per micro-batch on each process; accumulation makes up "
                              "the step", range="> 0")
    grad_accum: int = setting(1, "micro-batches per step when sequences_per_step is null (else derived)",
                              range="> 0")
    warmup_ratio: float = setting(0.05, "share of the steps over which the learning rate rises from 0", range="[0, 1)")
    weight_decay: float = setting(0.0, "AdamW weight decay", range=">= 0")
    eval_every: int = setting(100, "steps between held-out loss evaluations", range="> 0")
    log_every: int = setting(10, "steps between logged metrics", range="> 0")
    save_every: int = setting(200, "steps between checkpoints (what a killed run resumes from)", range="> 0")
    resume: bool = setting(True, _RESUME)
    num_samples: int = setting(8, "held-out prompts answered into samples.md", range=">= 0")
    gold_prompts: int = setting(64, "held-out prompts whose greedy answers get the gold-metric score", range=">= 0")
    max_new_tokens: int = setting(64, "answer length limit for samples.md and the gold score, in tokens", range="> 0")
    lora: LoraSection = field(default_factory=LoraSection)
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward: less memory, more time")


@dataclass
class RankSection:
    """Ranking the policy's own answers: K samples per prompt, ordered by a labeler.

    Writes runs/<name>/rank (round 1) or runs/<name>/rank-r<N> (run.round); the reward stage trains on it."""

    policy: str | None = setting(None, "whose answers are ranked; null: SFT in round 1, later the previous round's "
                                 "PPO model; set: round 2")
    prompts: str = setting("demo", "labeling prompts: demo (the reward rankings' prompts) or a file with prompt "
                           "(and gold)")
    heldout_prompts: str = setting("demo", "prompts ranked by gold for the reward report, never trained on: demo, "
                                   "a file, or none")
    num_prompts: int | None = setting(None, "labeling prompts used (the first N); null: all", range="> 0")
    num_heldout_prompts: int | None = setting(None, "held-out prompts used (the first N); null: all", range=">= 0")
    k: int = setting(4, "answers sampled per prompt (identical ones are merged)", range="[2, 16]")
    temperatures: list[float] = setting([0.7, 0.9, 1.1, 1.3], "sampling temperatures: answer j uses "
                                        "temperatures[j % their number]", range="> 0")
    max_new_tokens: int = setting(48, "answer length limit in tokens; equal to ppo.max_new_tokens, the answers are "
                                  "like PPO's", range="> 0")
    batch_size: int = setting(64, "prompts sampled together", range="> 0")
    chunk_prompts: int = setting(128, "prompts per saved chunk of answers (what a killed run keeps)", range="> 0")
    labeler: Literal["gold", "human", "judge"] = setting("gold", "who ranks: gold (a simulated person: the gold "
                                                         "metric + noise), human (you), judge (a model)")
    feedback_from_round: int | None = setting(None, "from this round on, rankings are people's feedback (make serve, make chat) "
                                              "on the model the round starts from", range=">= 1")
    noise: float = setting(0.07, "gold labeler's Plackett-Luce temperature on gold scores; 0: the exact gold order, "
                           "0.07: ~84% of pairs", range=">= 0")
    judge: str | None = setting(None, "labeler=judge: a reward model folder, or a causal LM (the answer's mean "
                                "log-prob)")
    ui: Literal["browser", "terminal"] = setting("browser", "labeler=human: label on a web page or in the terminal")
    host: str = setting("127.0.0.1", "the address the labeling page binds to; change it deliberately")
    port: int = setting(0, "the labeling page's port; 0: a free one", range=">= 0")
    labeler_name: str = setting("you", "labeler=human: whose labels (runs/<name>/labels/<labeler_name>.jsonl)")
    resume: bool = setting(True, "keep the answers and labels of an unfinished run made with the same settings")

    def validate(self) -> None:
        if not self.temperatures:
            raise UserError("rank.temperatures=[]: give one or more temperatures above 0.")
        if self.labeler == "judge" and not self.judge:
            raise UserError("rank.labeler=judge needs rank.judge=DIR (a reward model or a causal LM).")
        if not re.fullmatch(r"[\w.-]+", self.labeler_name):
            raise UserError(f"rank.labeler_name={self.labeler_name!r}: use letters, digits, '.', '_' or '-'.")


@dataclass
class RewardSection:
    """The reward model (TRL RewardTrainer): the SFT model with a scalar head, trained on rankings."""

    init_from: str | None = setting(None, "the model the reward model starts from (a scalar head is added); null: "
                                    "runs/<name>/sft")
    data: str = setting("demo+rank", "sources joined by +: demo (prepared rankings), rank, rank-r2, ... (ranked own "
                        "answers), feedback, files")
    val_data: str | None = setting(None, "held-out preferences; null: the demo's or rank's held-out rankings, else "
                                   "val_fraction of data")
    val_fraction: float = setting(0.1, "share of data's prompts held out when there is no val_data", range="[0, 1)")
    max_length: int = setting(256, "tokens per prompt + answer; a longer prompt loses its oldest tokens",
                              range="> 0")
    lr: float = setting(1e-4, "peak learning rate (cosine decay after the warmup)", range="> 0")
    epochs: float = setting(2.0, "passes over the training pairs", range="> 0")
    max_steps: int = setting(-1, "optimizer steps; -1: as many as epochs take", range="> 0 | -1")
    pairs_per_step: int | None = setting(None, "pairs per step over all processes (whatever their number); null: "
                                         "batch_size x grad_accum", range="> 0")
    batch_size: int = setting(16, "most pairs per micro-batch on each process; accumulation makes up the step",
                              range="> 0")
    grad_accum: int = setting(1, "micro-batches per step when pairs_per_step is null (else derived)",
                              range="> 0")
    warmup_ratio: float = setting(0.05, "share of the steps over which the learning rate rises from 0", range="[0, 1)")
    weight_decay: float = setting(0.0, "AdamW weight decay", range=">= 0")
    use_margin: bool = setting(False, "ask for a larger score gap where the data has a margin (or a rank distance)")
    center_rewards_coefficient: float | None = setting(None, "weight of an extra loss pulling rewards to mean 0; "
                                                       "null: none", range=">= 0")
    group_by_prompt: bool = setting(True, "K-way rankings: keep one prompt's pairs in the same batch (InstructGPT)")
    eval_every: int = setting(100, "steps between held-out evaluations", range="> 0")
    log_every: int = setting(10, "steps between logged metrics", range="> 0")
    save_every: int = setting(200, "steps between checkpoints (what a killed run resumes from)", range="> 0")
    resume: bool = setting(True, _RESUME)
    stats_prompts: int = setting(64, "PPO prompts whose answers by the policy set the reward normalisation (mean, "
                                 "std; the reward-stats step)", range="> 0")
    ensemble: int = setting(1, "reward models trained, seeds run.seed + i (k times the time); see "
                            "ppo.reward_aggregate", range=">= 1")
    lora: LoraSection = field(default_factory=LoraSection)
    gradient_checkpointing: bool = setting(False, "recompute activations in the backward: less memory, more time")


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
    judge: JudgeSection = field(default_factory=JudgeSection)
    compare: CompareSection = field(default_factory=CompareSection)
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
