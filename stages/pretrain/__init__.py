"""Pretraining stage: a tokenizer and a GPT from raw text (loop in pipeline/lm_loop.py)."""
