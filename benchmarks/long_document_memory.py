"""Peak memory of pretraining data preparation on one huge document (a text file with no blank lines).

    python -m benchmarks.long_document_memory [--mb 50] [--dir /tmp/longdoc]

Writes a file of real prose with its blank lines removed (so it is one document), then runs what
`make pretrain` does before training: train the BPE tokenizer on it and tokenize it into the token
cache. Prints the peak resident memory (ru_maxrss) of this process. Memory, like speed, is measured
here and not in a test.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path


def write_one_document(path: Path, mb: int) -> None:
    from pydoc_data.topics import topics

    prose = "\n".join(line for t in sorted(topics) for line in topics[t].splitlines() if line.strip()) + "\n"
    with open(path, "w") as f:
        written = 0
        while written < mb << 20:
            f.write(prose)
            written += len(prose)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=50)
    ap.add_argument("--dir", default="/tmp/longdoc")
    args = ap.parse_args()
    from data.token_cache import build_token_cache, iter_documents
    from pipeline.lm.tokenizer import train_tokenizer

    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    text = root / f"one_document_{args.mb}mb.txt"
    if not text.is_file():
        write_one_document(text, args.mb)
    sources = [(str(text), "split")]
    t0 = time.time()
    tok = train_tokenizer(iter_documents(sources, "train", "text", 0.05), vocab_size=4096)
    splits, _ = build_token_cache(sources, tok, root / f"cache-{time.time_ns()}", val_fraction=0.05)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{text.stat().st_size / 2**20:.0f} MB file, {splits['train'].n_docs + splits['val'].n_docs} documents, "
          f"{splits['train'].n_tokens + splits['val'].n_tokens:,} tokens: peak RSS {peak_mb:,.0f} MB "
          f"in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
