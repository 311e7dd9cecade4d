"""Serve chat models: an OpenAI-compatible API at /v1 and a chat page at /.

    python -m apps.serve --model runs/tiny/ppo                          # http://127.0.0.1:8000
    python -m apps.serve --model runs/tiny/sft --compare runs/tiny/ppo  # the page answers with both
    SERVE_API_KEY=secret python -m apps.serve --model runs/tiny/ppo --host 192.168.1.20   # your LAN address

What people rank or rate (the page's alternatives, POST /v1/feedback) is stored in the model's run
folder, runs/<name>/feedback/feedback.jsonl (--feedback-dir DIR elsewhere, --no-feedback: nothing);
the reward stage trains on it with reward.data=demo+rank+feedback (apps/serve/feedback.py, data/feedback.py).

Binds 127.0.0.1 unless --host says otherwise (then it prints a warning: anyone who can reach the
port can use the model; set an API key). Port 0 picks a free port; the URL is printed either way.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from apps.serve.feedback import DEFAULT_MEMORY
from apps.serve.protocol import Limits
from pipeline.errors import UserError, main_guard
from pipeline.listen import bind

API_KEY_VARIABLE = "SERVE_API_KEY"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m apps.serve", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (runs/<preset>/ppo, .../sft, any HF dir)")
    ap.add_argument("--compare", help="a second model directory: the page shows both answers side by side")
    ap.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    ap.add_argument("--port", type=int, default=8000, help="port (0 = any free port; default 8000)")
    ap.add_argument("--api-key", default=os.environ.get(API_KEY_VARIABLE),
                    help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_VARIABLE}, else none)")
    ap.add_argument("--max-batch", type=int, default=32, help="answers generated together per model (default 32)")
    ap.add_argument("--max-waiting", type=int, default=128,
                    help="answers queued beyond the batch before new requests get 429 (default 128)")
    ap.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens a request may ask (default 512)")
    ap.add_argument("--max-n", type=int, default=8, help="largest n (choices per request; default 8)")
    ap.add_argument("--max-body-kb", type=int, default=1024, help="largest request body in KiB (default 1024)")
    ap.add_argument("--feedback-dir", metavar="DIR",
                    help="store feedback in DIR/feedback.jsonl (default: the model's run folder, runs/<name>/feedback)")
    ap.add_argument("--no-feedback", action="store_true", help="record no feedback (POST /v1/feedback answers 403)")
    ap.add_argument("--feedback-memory", type=int, default=DEFAULT_MEMORY, metavar="N",
                    help=f"completions remembered for feedback, newest first (default {DEFAULT_MEMORY})")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if not 0 <= args.port < 65536:
        raise UserError(f"--port must be between 0 and 65535, got {args.port}")
    if min(args.max_batch, args.max_waiting, args.max_tokens, args.max_n, args.max_body_kb, args.feedback_memory) < 1:
        raise UserError("--max-batch, --max-waiting, --max-tokens, --max-n, --max-body-kb and --feedback-memory must "
                        "be at least 1")
    if args.no_feedback and args.feedback_dir:
        raise UserError("--no-feedback and --feedback-dir contradict each other; give one")
    return args


def model_names(paths: list[str]) -> list[str]:
    """Each model's name in the API: its directory name (ppo, sft), with the parent's when two clash."""
    names = [Path(p).name or p for p in paths]
    if len(set(names)) < len(names):
        names = ["/".join(Path(p).parts[-2:]) for p in paths]
    if len(set(names)) < len(names):
        names = [f"{n}-{i}" for i, n in enumerate(names)]
    return names


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    from transformers.utils import logging as hf_logging

    from apps.chat import load_chat_model
    from apps.serve.app import Served, create_app
    from apps.serve.feedback import Feedback
    from apps.serve.scheduler import Scheduler
    from data.feedback import model_fingerprint, store_dir
    from pipeline.runtime.device import pick_device

    hf_logging.disable_progress_bar()
    # Before loading: a taken port fails in a second, not after the load.
    sock = bind(args.host, args.port, what="the chat API", other_port="--port (make serve PORT=...)")
    feedback_dir, feedback_note = store_dir(args.model, args.feedback_dir, args.no_feedback)
    device = pick_device(args.device)
    paths = [args.model] + ([args.compare] if args.compare else [])
    served = []
    for name, path in zip(model_names(paths), paths):
        model, tok = load_chat_model(path, device)
        served.append(Served(name, path, model, tok, Scheduler(model, tok, max_batch=args.max_batch,
                                                               max_waiting=args.max_waiting),
                             fingerprint=model_fingerprint(path)))
    limits = Limits(max_tokens=args.max_tokens, max_n=args.max_n, max_body_bytes=args.max_body_kb * 1024)
    app = create_app(served, limits, api_key=args.api_key, host=args.host,
                     feedback=Feedback(feedback_dir, feedback_note, args.feedback_memory))

    import uvicorn

    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"WARNING: listening on {args.host}, not only this machine: anyone who can reach port {port} can "
              f"use the model{'' if args.api_key else ' (no API key set: --api-key or $' + API_KEY_VARIABLE + ')'}.",
              file=sys.stderr)
    print(f"serving {', '.join(s.name for s in served)} at http://{shown}:{port}/ (API at /v1; Ctrl-C stops)",
          flush=True)
    print(feedback_note, file=sys.stderr, flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
