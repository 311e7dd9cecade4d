import os
import sys
from pathlib import Path

# Tests never touch a hub: everything they load is made here or ships with the repo.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
SHAKESPEARE_HEAD = ROOT / "tests" / "data" / "tinyshakespeare_head.txt"  # public domain (Shakespeare)


import pytest  # noqa: E402


def tiny_text(n_chars: int = 200_000) -> str:
    """Real prose for tests: the first n_chars of tinyshakespeare. Its first 200,000 characters ship in
    tests/data, so a clone without ../shared trains the same tiny models and samples the same answers."""
    if n_chars <= len(SHAKESPEARE_HEAD.read_text()) or not SHAKESPEARE.exists():
        return SHAKESPEARE_HEAD.read_text()[:n_chars]
    return SHAKESPEARE.read_text()[:n_chars]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory):
    """A saved Hugging Face model dir: our BPE tokenizer (chat template included) and a
    randomly initialised 2-layer Llama. Built once per test session, in about a second."""
    import torch

    from pipeline.config.schema import ModelSection
    from pipeline.lm.model import build_model
    from pipeline.lm.tokenizer import train_tokenizer

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_lm")
    text = tiny_text(100_000)
    tok = train_tokenizer(text.split("\n\n"), vocab_size=512, min_frequency=2)
    model = build_model(ModelSection(n_layer=2, n_head=2, n_embd=32, block_size=128), tok)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def test_preset_chain(tmp_path_factory):
    """The whole chain through the Makefile on configs/test.yaml, uninterrupted: (runs/test, make's output).
    Shared by the end-to-end test and the fault-injection tests (their reference)."""
    import subprocess

    out = tmp_path_factory.mktemp("runs")
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    cmd = ["make", "-C", str(ROOT), "pretrain", "sft", "rank", "reward", "ppo", "eval",
           "CONFIG=configs/test.yaml", f"OUT={out}", f"PY={sys.executable}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"make failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out / "test", proc
