"""The pipeline's own stages: the table that declares each once (table.py), how a stage starts (entry.py), what make
reads from the table (plan.py), and what `make clean` deletes (clean.py). Stage code lives in stages/; this
layer only names it."""
