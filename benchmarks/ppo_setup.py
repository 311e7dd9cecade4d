"""The shared setup of the PPO benchmark: one tokenizer, policy, reward model, value model and
prompt set, saved as Hugging Face dirs that both trainers (ours and TRL 1.12's) load.

The reward is learnable and checkable: the reward model is trained (a few hundred regression
steps, seconds) to predict how many of a sequence's tokens contain the letter "e". A PPO
that works raises that share in the policy's answers, so "same learning" has a ground truth.
The policy is a freshly initialised Llama of the tiny preset's shape: its answers run to the
length limit, which gives both trainers the same, fixed amount of generation work.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pipeline.config.schema import ModelSection
from pipeline.lm.model import build_model, llama_config
from pipeline.lm.tokenizer import train_tokenizer

SHAKESPEARE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"
TARGET_LETTER = "e"
# The settings the saved models depend on; the others only change how the trainers run.
MODEL_KEYS = ("n_layer", "n_head", "n_embd", "vocab_size", "max_new_tokens", "seed", "num_prompts", "num_eval_prompts",
              "rm_steps")


@dataclass
class BenchSetup:
    """What both sides share. Defaults: the tiny preset's model, batch and answer length."""

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    vocab_size: int = 4096
    batch_size: int = 64
    num_minibatches: int = 4
    ppo_epochs: int = 4
    max_new_tokens: int = 48
    temperature: float = 0.7
    total_episodes: int = 512
    forward_batch_size: int = 64  # no-grad forward / generation chunk (TRL: local_rollout_forward_batch_size)
    lr: float = 3e-4
    kl_coef: float = 0.05
    vf_coef: float = 0.1
    missing_eos_penalty: float | None = None  # the fresh policy never ends: a constant, so left out
    seed: int = 1337
    num_prompts: int = 512
    num_eval_prompts: int = 128
    rm_steps: int = 300


def corpus_lines() -> tuple[list[str], str]:
    """Short lines of real prose (user questions) and the whole text (tokenizer training)."""
    if SHAKESPEARE.exists():
        text = SHAKESPEARE.read_text()
    else:  # keeps the builder usable without the shared data (e.g. in CI)
        text = "\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(4000))
    lines = [ln.strip() for ln in text.splitlines() if 20 <= len(ln.strip()) <= 80]
    return lines, text


def target_token_ids(tokenizer) -> torch.Tensor:
    """Ids of the ordinary tokens whose text contains TARGET_LETTER: the reward's ground truth."""
    special = set(tokenizer.all_special_ids)
    return torch.tensor([i for i in range(len(tokenizer))
                         if i not in special and TARGET_LETTER in tokenizer.decode([i])])


def target_share(ids: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row: the share of real (mask=1) tokens that are target tokens."""
    hit = torch.isin(ids, targets) & mask.bool()
    return hit.sum(1).float() / mask.sum(1).clamp(min=1).float()


def reward_target(share: torch.Tensor) -> torch.Tensor:
    # Spread [0, 1] over [-2, 2]: scores of order one, like a normalised reward model's.
    return 4.0 * (share - 0.5)


def synthetic_sequences(prompt_ids: list[list[int]], targets: torch.Tensor, vocab: int, special: set[int],
                        eos_id: int, max_new: int, n: int, rng: random.Random) -> list[list[int]]:
    """Prompt + an answer whose target-token share is drawn uniformly, so the reward model sees
    the whole range PPO will move through, not just the fresh policy's neighbourhood."""
    tset = set(targets.tolist())
    others = [i for i in range(vocab) if i not in tset and i not in special]
    tlist = sorted(tset)
    out = []
    for _ in range(n):
        p = rng.random()
        answer = [rng.choice(tlist) if rng.random() < p else rng.choice(others)
                  for _ in range(rng.randint(4, max_new))]
        if rng.random() < 0.5:
            answer.append(eos_id)
        out.append(rng.choice(prompt_ids) + answer)
    return out


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s)
        mask[i, :len(s)] = 1
    return ids, mask


def last_token_score(rm, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    h = rm.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).last_hidden_state
    last = mask.cumsum(1).argmax(1)
    return rm.score(h[torch.arange(h.size(0)), last]).squeeze(-1)


def train_reward_model(rm, tok, prompt_ids, targets, setup: BenchSetup, log=print) -> dict:
    """Regress the reward target; returns held-out fit (R^2) so a bad reward model is visible."""
    rng = random.Random(setup.seed)
    special = set(tok.all_special_ids)
    make = lambda n: synthetic_sequences(prompt_ids, targets, len(tok), special, tok.eos_token_id,  # noqa: E731
                                         setup.max_new_tokens, n, rng)
    val_ids, val_mask = right_pad(make(256), tok.pad_token_id)
    val_y = reward_target(target_share(val_ids, val_mask, targets))
    opt = torch.optim.AdamW(rm.parameters(), lr=1e-3, weight_decay=0.0)
    rm.train()
    for step in range(setup.rm_steps):
        ids, mask = right_pad(make(32), tok.pad_token_id)
        loss = torch.nn.functional.mse_loss(last_token_score(rm, ids, mask),
                                            reward_target(target_share(ids, mask, targets)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == setup.rm_steps - 1:
            log(f"  reward model step {step}: mse {loss.item():.3f}")
    rm.eval()
    with torch.no_grad():
        pred = last_token_score(rm, val_ids, val_mask)
    r2 = 1 - ((pred - val_y) ** 2).mean() / val_y.var()
    return {"rm_val_r2": r2.item(), "rm_val_mse": ((pred - val_y) ** 2).mean().item()}


def build(out_dir: Path, setup: BenchSetup, log=print) -> Path:
    """Write tokenizer+policy (policy/), reward/, value/ (= the reward model, as in our stage),
    prompts.jsonl, eval_prompts.jsonl and setup.json into out_dir; reused when setup is unchanged."""
    from transformers import LlamaForSequenceClassification

    out_dir = Path(out_dir)
    want = asdict(setup)
    done = out_dir / "setup.json"
    if done.exists():
        saved = json.loads(done.read_text())
        if all(saved.get(k) == want[k] for k in MODEL_KEYS) and (out_dir / "value").is_dir():
            done.write_text(json.dumps({**saved, **want}, indent=1))  # run settings may differ; models are the same
            return out_dir
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    torch.manual_seed(setup.seed)
    lines, text = corpus_lines()
    tok = train_tokenizer(text.split("\n\n"), vocab_size=setup.vocab_size, min_frequency=2)
    random.Random(setup.seed).shuffle(lines)
    prompts = lines[:setup.num_prompts]
    eval_prompts = lines[setup.num_prompts:setup.num_prompts + setup.num_eval_prompts]
    for name, ps in (("prompts.jsonl", prompts), ("eval_prompts.jsonl", eval_prompts)):
        (out_dir / name).write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ps))

    shape = ModelSection(n_layer=setup.n_layer, n_head=setup.n_head, n_embd=setup.n_embd,
                         block_size=256)
    policy = build_model(shape, tok)
    policy.save_pretrained(out_dir / "policy")
    tok.save_pretrained(out_dir / "policy")

    log(f"training the benchmark reward model ({setup.rm_steps} steps: share of tokens containing "
        f"'{TARGET_LETTER}')")
    config = llama_config(shape, len(tok), tok.pad_token_id, tok.eos_token_id)
    config.num_labels = 1
    config._attn_implementation = "sdpa"
    rm = LlamaForSequenceClassification(config)
    prompt_ids = [tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                          tokenize=True) for p in prompts[:64]]
    prompt_ids = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompt_ids]
    targets = target_token_ids(tok)
    fit = train_reward_model(rm, tok, prompt_ids, targets, setup, log)
    log(f"  reward model held-out R^2 {fit['rm_val_r2']:.3f}")
    for name in ("reward", "value"):
        rm.save_pretrained(out_dir / name)
        tok.save_pretrained(out_dir / name)
    done.write_text(json.dumps({**want, **fit, "target_vocab_share": len(targets) / len(tok)}, indent=1))
    return out_dir


def from_run(run_dir: Path, out_dir: Path, setup: BenchSetup, log=print) -> Path:
    """The real artifacts instead of the synthetic ones: <run>/sft as policy and reference,
    <run>/reward as reward and value model, <run>/data's PPO and evaluation prompts. Models are
    linked, not copied; the score is the reward model's raw output on both sides."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    sources = {"policy": run_dir / "sft", "reward": run_dir / "reward", "value": run_dir / "reward"}
    prompt_files = {"prompts.jsonl": run_dir / "data" / "ppo_prompts.jsonl",
                    "eval_prompts.jsonl": run_dir / "data" / "eval_prompts.jsonl"}
    for path in [*sources.values(), *prompt_files.values()]:
        if not path.exists():
            from pipeline.errors import UserError
            raise UserError(f"--use-run {run_dir}: {path} is missing; run `make sft reward` for that preset first "
                            "(or drop --use-run to benchmark on the synthetic models).")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for name, src in sources.items():
        (out_dir / name).symlink_to(src.resolve(), target_is_directory=True)
    for name, src in prompt_files.items():
        records = [json.loads(line) for line in src.read_text().splitlines() if line.strip()]
        limit = setup.num_prompts if name == "prompts.jsonl" else setup.num_eval_prompts
        (out_dir / name).write_text("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in records[:limit]))
    (out_dir / "setup.json").write_text(json.dumps({**asdict(setup), "use_run": str(run_dir)}, indent=1))
    log(f"benchmark models from {run_dir}: policy {sources['policy']}, reward/value {sources['reward']}")
    return out_dir
