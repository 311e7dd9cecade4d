"""Shared plumbing for every stage: config, artifacts, tokenizer, model, metrics, runtime."""
