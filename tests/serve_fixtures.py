"""Fixtures for the serving tests: real tiny models, `python -m apps.serve` started on a free
loopback port the way a user starts it, and a headless Chromium for the chat page."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from eval_fixtures import lively_copy
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.lm.tokenizer import EOS, ROLE_TOKENS

try:  # the HTTP client the openai package brings: httpx2 in its current releases, httpx before
    import httpx2 as httpx
except ImportError:
    import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
HAVE_BROWSER = bool(BROWSER and Path(CHROMEDRIVER).exists())
NO_BROWSER = "no chromium + chromedriver here (apt-get install chromium chromium-driver; .ci/run does)"


def endless_copy(src: Path, dst: Path, seed: int) -> Path:
    """A lively model that never ends a turn (the end-of-turn tokens get logit 0, below the best
    token) and reads a long context: an answer runs to max_tokens, long enough to walk away from."""
    lively_copy(src, dst, seed=seed, max_positions=1 << 20)
    model = AutoModelForCausalLM.from_pretrained(dst)
    tok = AutoTokenizer.from_pretrained(dst)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    with torch.no_grad():
        for t in (EOS, *ROLE_TOKENS):
            model.lm_head.weight[tok.convert_tokens_to_ids(t)] = 0
    model.save_pretrained(dst)
    return dst


def served_models(tiny_lm_dir: Path, root: Path) -> tuple[Path, Path]:
    """runs-like dirs `sft` (context 128) and `ppo` (endless answers, long context)."""
    return lively_copy(tiny_lm_dir, root / "sft", seed=5), endless_copy(tiny_lm_dir, root / "ppo", seed=6)


class Server:
    url: str
    proc: subprocess.Popen  # the server's process (a test may kill it)
    stderr: str = ""  # what the server printed to stderr, once it has stopped


@contextmanager
def running_server(*args: str, env: dict | None = None, host: str = "127.0.0.1", timeout: float = 60):
    """Start the server (port 0: a free port) and yield it; stop it afterwards and keep its stderr."""
    cmd = [sys.executable, "-m", "apps.serve", "--host", host, "--port", "0", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        match = re.search(r"http://\S+/", line)
        assert match, f"no URL printed: {line!r}\n{proc.stderr.read() if proc.poll() is not None else ''}"
        server = Server()
        server.url = url = match.group(0).rstrip("/")
        server.proc = proc
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            _, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        if "server" in locals():
            server.stderr = err


@contextmanager
def headless_chromium():
    """Debian's Chromium, headless, driven by Selenium; quit afterwards."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()
