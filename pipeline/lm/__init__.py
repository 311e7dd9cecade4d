"""The language model: building and loading it, tokenizers, the chat format, sampling and log-probs."""
