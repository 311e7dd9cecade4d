"""DPO on TRL's DPOTrainer: the SFT model learns the preferences directly, with the frozen SFT model
as the reference (loss -log sigmoid(beta * (log-ratio of chosen - log-ratio of rejected)))."""

from __future__ import annotations

from pipeline.lm.chat_format import content_as_text
from pipeline.lm.hf_glue import lora_config, trainer_kwargs, use_our_progress
from pipeline.runtime.batch import announce, section_split


def build_trainer(cfg, model, ref_model, tokenizer, train: list[dict], val: list[dict] | None, *, output_dir,
                  callback):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    d = cfg.dpo
    batch = announce("dpo", section_split(d, "dpo", "pairs"))
    args = DPOConfig(**trainer_kwargs(d, output_dir=output_dir, run=cfg.run, eval=bool(val), batch=batch),
                     beta=d.beta, loss_type=[d.loss_type], max_length=d.max_length,  # pairs are screened to fit
                     disable_dropout=True, dataset_num_proc=None)
    as_text = content_as_text(tokenizer)  # TRL tokenizes the pairs itself: each row's kwargs keep their text text

    def rows(pairs: list[dict]):
        return Dataset.from_list([{**p, "chat_template_kwargs": as_text} for p in pairs])

    trainer = DPOTrainer(model=model, ref_model=None if d.lora.enabled else ref_model, args=args,
                         train_dataset=rows(train), eval_dataset=rows(val) if val else None,
                         processing_class=tokenizer, callbacks=[callback],
                         peft_config=lora_config(d.lora) if d.lora.enabled else None)
    use_our_progress(trainer)
    return trainer


def pairs_seen(trainer) -> int:
    """Pair updates: optimizer steps x pairs per step (the last step of an epoch may hold fewer)."""
    a = trainer.args
    return trainer.state.global_step * a.per_device_train_batch_size * a.gradient_accumulation_steps * a.world_size
