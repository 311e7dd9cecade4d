"""GRPO and RLOO on TRL's trainers: prompts in, `num_generations` sampled answers per prompt, each
scored by the reward model exactly as PPO scores it (pipeline.judge.scoring.RewardFunction).

Both are PPO without a value model: the baseline of an answer's reward is the other answers to the
same prompt (RLOO: their mean; GRPO: the group mean, advantages scaled by the group's std).
Budget: `total_episodes` sampled answers (PPO's by default), so the comparison is fair.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

from pipeline.errors import UserError
from pipeline.judge.scoring import RewardFunction, as_prompt
from pipeline.lm.chat_format import content_as_text, encode_chat
from pipeline.lm.hf_glue import lora_config, trainer_kwargs, use_our_progress
from pipeline.runtime.batch import announce, section_split

log = logging.getLogger(__name__)


def episodes(cfg, method: str) -> int:
    s = getattr(cfg, method)
    return s.total_episodes if s.total_episodes is not None else cfg.ppo.total_episodes


def answers_per_step(s) -> int:
    """The global batch: answers_per_step, or batch_size x grad_accum; the same whatever the processes."""
    return s.answers_per_step if s.answers_per_step is not None else s.batch_size * s.grad_accum


def optimizer_steps(total_episodes: int, s) -> int:
    """Optimizer steps that sample `total_episodes` answers: each step trains on answers_per_step answers
    over all processes, and each generated answer is trained on num_iterations times."""
    per_step = answers_per_step(s)
    steps = total_episodes * s.num_iterations // per_step
    if steps < 1:
        raise UserError(f"total_episodes={total_episodes} is less than one step of {per_step} answers; "
                        "raise total_episodes or lower batch_size.")
    return steps


def answers_sampled(steps: int, s) -> int:
    return steps * answers_per_step(s) // s.num_iterations


def prompt_dataset(prompts: list, tokenizer, max_prompt_length: int, name: str) -> tuple[list[dict], int]:
    """TRL's conversational prompt records; prompts longer than max_prompt_length are dropped
    (cutting one would cut its question or its assistant marker) and counted."""
    rows, dropped = [], 0
    for p in prompts:
        msgs = as_prompt(p)
        if len(encode_chat(tokenizer, msgs, add_generation_prompt=True)) > max_prompt_length:
            dropped += 1
            continue
        rows.append({"prompt": msgs})
    if dropped:
        log.warning("%s: dropped %d of %d prompts longer than %s.max_prompt_length=%d", name, dropped, len(prompts),
                    name, max_prompt_length)
    if not rows:
        raise UserError(f"no prompt fits {name}.max_prompt_length={max_prompt_length} ({len(prompts)} read); "
                        f"raise {name}.max_prompt_length.")
    return rows, dropped


def reward_function(cfg, reward_model, tokenizer, score_stats: tuple[float, float]) -> RewardFunction:
    """PPO's reward: its normalisation statistics and its missing-EOS and clip settings."""
    p = cfg.ppo
    return RewardFunction(reward_model, tokenizer, mean=score_stats[0], std=score_stats[1], clip=p.reward_clip,
                          missing_eos_penalty=p.missing_eos_penalty, missing_eos_mode=p.missing_eos_mode,
                          batch_size=p.forward_batch_size)


def build_trainer(method: str, cfg, model, tokenizer, prompts: list[dict], reward_fn, *, output_dir, callback,
                  max_steps: int):
    from datasets import Dataset

    s = getattr(cfg, method)
    # trainer_kwargs reads the usual section fields; the length of the run is the answer budget's
    fields = SimpleNamespace(**vars(s), epochs=1, max_steps=max_steps, eval_every=None)
    batch = announce(method, section_split(s, method, "answers"))
    kwargs = trainer_kwargs(fields, output_dir=output_dir, run=cfg.run, eval=False, batch=batch)
    kwargs["include_num_input_tokens_seen"] = "no"  # TRL's batches carry no input_ids to count
    common = dict(num_generations=s.num_generations, max_completion_length=s.max_new_tokens, beta=s.beta,
                  epsilon=s.epsilon, num_iterations=s.num_iterations, temperature=s.temperature, top_k=s.top_k,
                  top_p=s.top_p, mask_truncated_completions=False,  # the missing-EOS penalty handles them, as PPO
                  disable_dropout=True, shuffle_dataset=True)
    import trl

    if method == "grpo":
        Config, Trainer = trl.GRPOConfig, trl.GRPOTrainer
        extra = dict(loss_type=s.loss_type, scale_rewards=s.scale_rewards)
    else:
        Config, Trainer = trl.RLOOConfig, trl.RLOOTrainer
        extra = dict(normalize_advantages=s.normalize_advantages)
    # TRL renders and tokenizes the prompts itself: its chat_template_kwargs keep their special strings text
    args = Config(**kwargs, **common, **extra, chat_template_kwargs=content_as_text(tokenizer))
    trainer = Trainer(model=model, reward_funcs=reward_fn, args=args, train_dataset=Dataset.from_list(prompts),
                      processing_class=tokenizer, callbacks=[callback],
                      peft_config=lora_config(s.lora) if s.lora.enabled else None)
    use_our_progress(trainer)
    return trainer
