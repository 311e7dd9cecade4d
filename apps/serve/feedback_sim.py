"""A simulated person who ranks a running server's answers through its API, as a person on the chat page
does: for each prompt it asks /v1/chat/completions for K answers (n=K), ranks them with the rank
stage's simulated labeler (data/simulated.py: the gold metric against the prompt's documented answer,
a Plackett-Luce draw at --noise) and sends the ranking to POST /v1/feedback.

    python -m apps.serve --model runs/tiny/ppo &                   # stores into runs/tiny/feedback
    python -m apps.serve.feedback_sim --url http://127.0.0.1:8000 --prompts runs/tiny/data/rank_prompts.jsonl \\
        --rankings 20 --k 4

It drives the loop end to end without a person (README "Feedback from use"); the rankings are as good
as the gold metric and the noise make them, which is what the rank stage's gold labeler gives too.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import urllib.error
import urllib.request

from data.gold import gold_score
from data.simulated import agreement, plackett_luce
from pipeline.errors import UserError, main_guard


class Api:
    def __init__(self, url: str, key: str | None):
        self.url, self.key = url.rstrip("/"), key

    def call(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=600) as res:
                return json.loads(res.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            raise UserError(f"{path}: the server answered {e.code}: {message}") from None
        except urllib.error.URLError as e:
            raise UserError(f"cannot reach {self.url} ({e.reason}); start it with `make serve` or "
                            "`python -m apps.serve --model DIR` and give its address with --url") from None


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m apps.serve.feedback_sim", description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000", help="the server (default http://127.0.0.1:8000)")
    ap.add_argument("--prompts", required=True,
                    help="prompts with documented answers (runs/<name>/data/rank_prompts.jsonl, any prompt file)")
    ap.add_argument("--model", help="the served model to ask (default: the first one /v1/models lists)")
    ap.add_argument("--rankings", type=int, default=20, help="how many prompts to rank (default 20)")
    ap.add_argument("--k", type=int, default=4, help="answers per prompt (n; default 4)")
    ap.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    ap.add_argument("--max-tokens", type=int, default=96, help="tokens per answer (default 96)")
    ap.add_argument("--noise", type=float, default=0.1, help="the labeler's Plackett-Luce temperature (0: gold order)")
    ap.add_argument("--seed", type=int, default=0, help="which prompts, and the labeler's draws")
    ap.add_argument("--labeler", default="simulated", help="the name stored (NAME@serve; default simulated)")
    ap.add_argument("--api-key", default=os.environ.get("SERVE_API_KEY"), help="the server's key ($SERVE_API_KEY)")
    args = ap.parse_args(argv)
    if args.rankings < 1 or args.k < 2 or args.max_tokens < 1 or args.noise < 0:
        raise UserError("--rankings must be at least 1, --k at least 2, --max-tokens at least 1, --noise at least 0")
    return args


@main_guard
def main(argv=None) -> int:
    args = parse_args(argv)
    from data.loaders import load_prompts

    prompts = [p for p in load_prompts(args.prompts) if p.get("gold")]
    if not prompts:
        raise UserError(f"{args.prompts} has no prompt with a documented answer (gold) to rank answers against")
    rng = random.Random(args.seed)
    rng.shuffle(prompts)
    api = Api(args.url, args.api_key)
    status = api.call("/v1/feedback/status")
    if not status["enabled"]:
        raise UserError(f"the server records no feedback: {status['note']}")
    model = args.model or api.call("/v1/models")["data"][0]["id"]
    taus = []
    for n, p in enumerate(prompts[:args.rankings], 1):
        done = api.call("/v1/chat/completions", {"model": model, "messages": p["prompt"], "n": args.k,
                                                 "temperature": args.temperature, "max_tokens": args.max_tokens})
        texts = [c["message"]["content"] for c in sorted(done["choices"], key=lambda c: c["index"])]
        scores = [round(gold_score(t, p["gold"]), 6) for t in texts]
        tiers = plackett_luce(scores, args.noise, rng)
        ranking = [[{"id": done["id"], "index": i} for i in tier] for tier in tiers]
        api.call("/v1/feedback", {"ranking": ranking, "labeler": args.labeler,
                                  "reason": f"simulated: gold metric, Plackett-Luce noise {args.noise:g}"})
        tau = agreement(tiers, scores)
        taus.append(tau)
        order = " > ".join("=".join(f"{scores[i]:.2f}" for i in tier) for tier in tiers)
        print(f"{n}/{min(args.rankings, len(prompts))}: ranked by gold score {order}", flush=True)
    told = [t for t in taus if t is not None]
    mean = f"{sum(told) / len(told):.3f}" if told else "-"
    print(f"stored {len(taus)} rankings in {status['store']} (mean Kendall tau with the gold order {mean} over "
          f"{len(told)} rankings whose answers the metric tells apart)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
