"""One module per stage of the RLHF recipe; run each with `python -m stages.<name>`."""
