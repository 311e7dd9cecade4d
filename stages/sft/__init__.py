"""SFT stage: instruction tuning with TRL SFTTrainer, loss on the assistant tokens."""
