"""Stage 1: a GPT trained from scratch on raw text -> runs/<name>/pretrain.

    python -m stages.pretrain --config configs/tiny.yaml [section.key=value ...]
    accelerate launch --config_file configs/accelerate/ddp.yaml -m stages.pretrain --config ...

Text (train.data) -> BPE tokenizer or word vocabulary (tokenizer.kind; trained here, or tokenizer.from)
-> token files (cached) -> Llama-style model (pipeline.lm.model) -> training loop (stages.pretrain.loop) -> a
Hugging Face model directory with tokenizer, samples.md, metrics.jsonl and manifest.json, plus the
bigram baseline counted on the same tokens (bigram.safetensors; its held-out numbers in the manifest).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from data.demo import pretrain_sources
from data.token_cache import (
    build_token_cache,
    cache_key,
    iter_documents,
    prune_cache,
    source_fingerprint,
)
from pipeline.artifacts.atomic import publish_dir, scratch_name
from pipeline.artifacts.store import fingerprint, start_artifact
from pipeline.chain.table import is_up_to_date, key
from pipeline.config.cli import stage_config
from pipeline.config.loader import to_dict
from pipeline.errors import UserError, main_guard
from pipeline.lm.model import build_model, describe
from pipeline.lm.tokenizer import load_tokenizer, train_tokenizer
from pipeline.lm.word_tokenizer import train_word_tokenizer
from pipeline.runtime.device import mixed_precision, pick_device, seed_everything, share_cpu_threads
from pipeline.runtime.sharding import full_model_state, is_sharded, shard_cpu_launch, stage_shards_on_cpu
from stages.pretrain.baseline import fit_bigram, unknown_tokens
from stages.pretrain.loop import train_lm
from stages.pretrain.samples import write_samples


def get_tokenizer(cfg, sources, cache_root: Path, accelerator):
    """(tokenizer, its cache directory or None when it comes from tokenizer.from)."""
    if cfg.tokenizer.from_:
        tok, changes = load_tokenizer(cfg.tokenizer.from_)
        for change in changes:
            accelerator.print(f"tokenizer: {change}")
        return tok, None
    kind = cfg.tokenizer.kind
    key = cache_key(sources, cfg.train.text_field, cfg.train.val_fraction,
                    f"{kind}-{cfg.tokenizer.vocab_size}-{cfg.tokenizer.min_frequency}")
    cached = cache_root / f"tokenizer-{key}"
    with accelerator.main_process_first():
        if not (cached / "tokenizer.json").is_file():
            accelerator.print(f"training a {cfg.tokenizer.vocab_size}-token {'BPE' if kind == 'bpe' else 'word'} "
                              "tokenizer on the training text ...")
            docs = iter_documents(sources, "train", cfg.train.text_field, cfg.train.val_fraction)
            train_vocabulary = train_tokenizer if kind == "bpe" else train_word_tokenizer
            tok = train_vocabulary(docs, cfg.tokenizer.vocab_size, cfg.tokenizer.min_frequency)
            tmp = scratch_name(cached)  # private to this process: a concurrent run builds its own
            tok.save_pretrained(tmp)
            publish_dir(tmp, cached)
        tok, _ = load_tokenizer(str(cached))
    if kind == "word":
        accelerator.print("word vocabulary: text is written back whitespace-normalised (NFC; runs of spaces and "
                          "tabs -> one space; no space next to a newline or at either end)")
    return tok, cached


@main_guard
def main(argv: list[str] | None = None) -> int:
    cfg = stage_config("pretrain", argv, description="Pretrain a GPT from scratch on raw text.")
    final = cfg.stage_dir("pretrain")
    sources = pretrain_sources(cfg)
    inputs = {"data": {s: source_fingerprint(s) for s, _ in sources}}
    if cfg.tokenizer.from_:
        inputs["tokenizer"] = {
            cfg.tokenizer.from_: fingerprint(cfg.tokenizer.from_) if Path(cfg.tokenizer.from_).exists() else "hub"}
    if is_up_to_date(cfg, "pretrain"):
        return 0

    from accelerate import Accelerator

    stage_shards_on_cpu()
    device_type = pick_device(cfg.run.device).type
    accelerator = Accelerator(cpu=device_type == "cpu", mixed_precision=mixed_precision(cfg.run.dtype, device_type))
    shard_cpu_launch(accelerator)
    share_cpu_threads(device_type, int(os.environ.get("LOCAL_WORLD_SIZE", accelerator.num_processes)))
    seed_everything(cfg.run.seed)
    writer = start_artifact(final, "pretrain", resume=cfg.train.resume,
                            key=key(cfg, "pretrain"), resume_flag="train.resume")
    accelerator.wait_for_everyone()

    cache_root = cfg.run_dir / "cache"
    tokenizer, tokenizer_dir = get_tokenizer(cfg, sources, cache_root, accelerator)
    with accelerator.main_process_first():
        splits, cache_dir = build_token_cache(sources, tokenizer, cache_root, text_field=cfg.train.text_field,
                                              val_fraction=cfg.train.val_fraction)
    if accelerator.is_main_process:
        prune_cache(cache_root, [p for p in (cache_dir, tokenizer_dir) if p], log=accelerator.print)
    train, val = splits["train"], splits["val"]
    accelerator.print(f"data: {train.n_tokens:,} train tokens ({train.n_docs} documents), {val.n_tokens:,} val "
                      f"tokens; {val.bytes_per_token:.2f} bytes/token; cache {cache_dir}")

    model = build_model(cfg.model, tokenizer)
    block = cfg.model.block_size
    if block > model.config.max_position_embeddings:
        raise UserError(f"model.block_size={block} is over the model's max_position_embeddings="
                        f"{model.config.max_position_embeddings}; lower model.block_size.")
    accelerator.print(describe(model, block))
    metrics = train_lm(model, train.tokens(), val.tokens(), cfg=cfg.train, block=block, seed=cfg.run.seed,
                       accelerator=accelerator, checkpoint_dir=writer.checkpoint_dir, metrics_dir=writer.out_dir,
                       val_bytes_per_token=val.bytes_per_token, compile_model=cfg.run.compile)
    weights = full_model_state(accelerator, model)  # under FSDP gathered from every process's shards
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        model.save_pretrained(writer.out_dir, state_dict=weights)
        tokenizer.save_pretrained(writer.out_dir)
        if is_sharded(accelerator):  # the sampling below runs on this process alone: the saved, whole model
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(writer.out_dir).to(accelerator.device).eval()
        bigram, bigram_metrics = fit_bigram(train.tokens(), val.tokens(), len(tokenizer), block=block,
                                            n_windows=cfg.train.eval_batches * cfg.train.batch_size,
                                            bytes_per_token=val.bytes_per_token)
        bigram.save(writer.out_dir)
        write_samples({"GPT": model, "bigram": bigram}, tokenizer, val.tokens(), cfg, writer.out_dir / "samples.md")
        metrics.update(train_tokens=train.n_tokens, val_tokens=val.n_tokens, val_bytes=val.n_bytes,
                       **bigram_metrics, **unknown_tokens(tokenizer, val.tokens()))
        writer.commit(config=to_dict(cfg), inputs=inputs, metrics=metrics)
        unknown = (f"; {metrics['val_unknown_tokens']:,} held-out tokens unknown "
                   f"({100 * metrics['val_unknown_share']:.1f}%)" if "val_unknown_tokens" in metrics else "")
        print(f"pretrain: val loss {metrics['val_loss']:.4f}, bpb {metrics['val_bpb']:.4f} (bigram baseline: "
              f"{metrics['bigram_val_loss']:.4f}, bpb {metrics['bigram_val_bpb']:.4f}){unknown}, "
              f"{metrics['tokens_seen']:,} tokens -> {final}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return 0


if __name__ == "__main__":
    sys.exit(main())
