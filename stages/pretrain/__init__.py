"""Pretraining stage: a tokenizer and a GPT from raw text (loop in stages/pretrain/loop.py)."""
