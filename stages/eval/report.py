"""report.md: the evaluation read top to bottom, rendered from the report.json data."""

from __future__ import annotations


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _cell(text: str | None, limit: int = 240) -> str:
    text = (text or "").replace("\n", " ").replace("|", "\\|").strip()
    return (text[:limit] + "…") if len(text) > limit else (text or "*(empty)*")


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_f(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return lines + [""]


def _img(report: dict, key: str, alt: str) -> list[str]:
    name = report.get("plots", {}).get(key)
    return [f"![{alt}]({name})", ""] if name else []


def _win(w: dict | None) -> str:
    if not w or w.get("win_rate") is None:
        return "–"
    return (f"**{w['win_rate']:.2f}** [{w['ci_low']:.2f}, {w['ci_high']:.2f}] "
            f"({w['wins']}W/{w['ties']}T/{w['losses']}L)")


def section_lm(report: dict) -> list[str]:
    lines = ["## 1. Language modelling on held-out text", ""]
    models = report["models"]
    if not any(m.get("lm") for m in models.values()):
        return lines + ["*Skipped:* no held-out text (see *Skipped* below).", ""]
    lines += [f"Held-out text: `{report['lm_data']['source']}` ({report['lm_data']['documents']} documents). "
              "Loss and perplexity are per token (comparable only between models sharing a tokenizer); "
              "bits per byte compares any models.", ""]
    baseline = report.get("lm_baseline")
    named = ([(f"bigram (add-k, k={baseline['k']:g})", baseline["lm"])] if baseline else []) + \
        [(name, m["lm"]) for name, m in models.items() if m.get("lm")]
    rows = [[name, lm["loss"], lm["perplexity"], lm["bits_per_byte"], str(lm["tokens"]), _unknown(lm)]
            for name, lm in named]
    lines += _table(["model", "loss (nats/token)", "perplexity", "bits per byte", "tokens", "unknown tokens"], rows)
    if baseline:
        lines += ["The bigram row is the count-based baseline fitted on the pretraining tokens of "
                  f"`{baseline['path']}`: a model must beat it to have learned more than which token follows which.",
                  ""]
    if any(lm.get("unknown_tokens") for _, lm in named):
        lines += ["Unknown tokens (`<|unk|>`, a word vocabulary's words it does not have) are scored as one token: "
                  "predicting *some unknown word* is easier than spelling the word, so with unknown tokens bits "
                  "per byte flatter a word vocabulary.", ""]
    lines += _img(report, "lm", "bits per byte")
    return lines + section_temperature(report)


def _unknown(lm: dict) -> str:
    n = lm.get("unknown_tokens")
    return "–" if n is None else f"{n} ({100 * n / max(lm['tokens'], 1):.1f}%)"


def section_temperature(report: dict) -> list[str]:
    from pipeline.lm.temperature_sweep import sweep_markdown

    t = report.get("temperature")
    if not t:
        return []
    return ["### Temperature: low T repeats, high T invents", ""] + sweep_markdown(t["prompt"], t["sweeps"])


def section_preference(report: dict) -> list[str]:
    s = report["sampling"]
    if not report["prompts"]["count"]:
        return ["## 2. Answers to held-out prompts", "", f"*Skipped:* {report['prompts']['source']}.", ""]
    lines = ["## 2. Answers to held-out prompts", "",
             f"{report['prompts']['count']} prompts from `{report['prompts']['source']}` (the test set: no stage "
             "trains or tunes on them), answered at temperature "
             f"{s['temperature']}, top-k {s['top_k']}, top-p {s['top_p']}, at most {s['max_new_tokens']} tokens "
             f"(seed {report['seed']}).", ""]
    rows = []
    for name, m in report["models"].items():
        rows.append([name, _pm(m, "rm"), _pm(m, "gold"), f"{m['answer_words_mean']:.1f}",
                     f"{m['answer_tokens_mean']:.1f}", f"{100 * m['ended_with_eos']:.0f}%"])
    lines += _table(["model", "RM score (mean ± std)", "gold metric (mean ± std)", "words", "tokens",
                     "ended with EOS"], rows)
    lines += _img(report, "scores", "score distributions")
    if report["comparisons"]:
        lines += [f"### Win rate of {report['candidate']}", "",
                  "Per prompt, the candidate's answer against the baseline's: a win, a tie (counts half) or a "
                  "loss; 95% Wilson interval over prompts (a prompt answered several times counts once, "
                  "with its mean outcome). *Matched length* keeps only prompts whose two answers are of "
                  "similar length, so a reward model's taste for long answers cannot explain the win. If the "
                  "RM win rate is high but the gold win rate is not, the policy learned to please the reward "
                  "model rather than to answer better (reward over-optimisation).", ""]
        rows = []
        for c in report["comparisons"]:
            rows.append([f"{c['candidate']} vs {c['baseline']}", _win(c.get("win_rate_rm")),
                         _win(c.get("win_rate_gold")), _win(c.get("win_rate_rm_matched_length")),
                         _win(c.get("win_rate_gold_matched_length")), str(c["matched_length_pairs"])])
        lines += _table(["comparison", "by reward model", "by gold metric", "RM, matched length",
                         "gold, matched length", "matched pairs"], rows)
        lines += _img(report, "win_rates", "win rates")
        bar = report.get("quality_bar")
        if bar:
            lines += [f"**Quality bar**, {bar['candidate']} vs {bar['baseline']} (RM win rate ≥ {bar['min_win_rate']}, "
                      f"KL ≤ {bar['kl_budget']} nats, gold up: the paired gold difference's 95% interval above "
                      f"zero, counted over prompts): **{bar['verdict']}**.", ""]
        lines += ["### KL divergence from each baseline", "",
                  "KL(candidate ‖ baseline) per answer, in nats, estimated on the candidate's own samples: "
                  "k1 = Σ log p/q (unbiased, noisy), k3 = Σ (q/p − 1 − log q/p) (unbiased, never negative), "
                  "both at the sampling temperature as PPO computes them."
                  + (" With top-k/top-p truncation the samples do not come from the full distribution, so "
                     "these numbers are only indicative." if s["top_k"] or s["top_p"] < 1 else ""), ""]
        rows = []
        for c in report["comparisons"]:
            kl = c.get("kl")
            if kl:
                rows.append([f"KL({c['candidate']} ‖ {c['baseline']})", kl["k1_mean"], kl["k1_std"], kl["k3_mean"],
                             kl["k1_per_token"]])
            else:
                rows.append([f"KL({c['candidate']} ‖ {c['baseline']})", f"skipped: {c.get('kl_skipped')}",
                             "", "", ""])
        lines += _table(["", "k1 mean", "k1 std", "k3 mean", "k1 per token"], rows)
        lines += _img(report, "kl", "KL per answer")
    lines += spearman_lines(report)
    return lines + _img(report, "length", "length vs reward")


def spearman_lines(report: dict) -> list[str]:
    """Spearman(RM, gold) over every model's answers, then over each compared pair's; nothing when undefined
    (no RM, no gold, or a constant score)."""
    if report.get("rm_gold_spearman") is None:
        return []
    pairs = "".join(f" Over {c['candidate']}'s and {c['baseline']}'s answers only: {c['rm_gold_spearman']:.3f}."
                    for c in report.get("comparisons") or [] if c.get("rm_gold_spearman") is not None)
    return [f"Rank correlation (Spearman) between reward-model score and gold metric over all answers: "
            f"**{report['rm_gold_spearman']:.3f}** (1 = the RM orders answers as the gold metric does).{pairs}", ""]


def _pm(m: dict, key: str) -> str:
    if m.get(f"{key}_mean") is None:
        return "–"
    return f"{m[f'{key}_mean']:.3f} ± {m[f'{key}_std']:.3f}"


def section_reward(report: dict) -> list[str]:
    lines = ["## 3. Reward model", ""]
    rm = report.get("reward_model")
    if not rm:
        return lines + ["*Skipped:* no reward model.", ""]
    lines += [f"`{rm['path']}`: its held-out numbers as the reward stage measured them "
              "(pairwise accuracy, rank correlation with the human ranking, ...).", ""]
    metrics = rm["metrics"]
    if not metrics:
        return lines + ["The reward artifact records no metrics.", ""]
    important = [k for k in metrics if any(w in k for w in ("acc", "spearman", "kendall", "tau", "corr"))]
    rest = [k for k in metrics if k not in important]
    lines += _table(["metric", "value"], [[k, metrics[k]] for k in important])
    if rest:
        lines += ["<details><summary>its other numbers</summary>", ""]
        lines += _table(["metric", "value"], [[k, metrics[k]] for k in rest]) + ["</details>", ""]
    return lines


def section_curves(report: dict) -> list[str]:
    lines = ["## 4. Training curves", ""]
    curves = report.get("curves") or {}
    if not curves:
        return lines + ["*Skipped:* no stage of this run left a metrics.jsonl.", ""]
    lines += ["From each stage's `metrics.jsonl`. In PPO, the proxy reward (what the reward model says) and the "
              "gold metric (what actually got better) share one chart: a proxy that keeps rising while gold "
              "stalls or falls is over-optimisation.", ""]
    for stage, keys in curves.items():
        lines += [f"**{stage}** — logged: {', '.join(f'`{k}`' for k in keys)}", ""]
        lines += _img(report, f"curves_{stage}", f"{stage} curves")
    return lines


def section_samples(report: dict) -> list[str]:
    lines = ["## 5. Side by side", ""]
    rows = report.get("samples") or []
    if not rows:
        return lines + ["*No samples.*", ""]
    names = list(rows[0]["answers"])
    shown = names[-2:] if len(names) > 2 else names  # the main comparison: baseline and candidate
    header = ["prompt"] + [f"{n} (RM)" for n in shown] + (["gold answer"] if rows[0].get("gold") else [])
    table = []
    for r in rows:
        cells = [_cell(r["prompt"], 120)]
        for n in shown:
            a = r["answers"][n]
            score = f" **[{a['rm']:.2f}]**" if a.get("rm") is not None else ""
            cells.append(_cell(a["text"]) + score)
        if r.get("gold"):
            cells.append(_cell(r["gold"], 160))
        table.append(cells)
    lines += _table(header, table)
    if len(names) > 2:
        lines += ["All models' answers, with RM and gold scores: `answers.jsonl`.", ""]
    return lines


def render_report(report: dict) -> str:
    models = ", ".join(f"`{n}` ({m['path']})" for n, m in report["models"].items())
    lines = [f"# Evaluation of run `{report['run']}`", "",
             f"Models: {models}. Candidate: **{report['candidate']}**"
             + (f", compared with {', '.join(report['baselines'])}." if report["baselines"] else "."), ""]
    if report["skipped"]:
        lines += ["**Skipped** (what could not be measured, and why):", ""]
        lines += [f"- {s}" for s in report["skipped"]] + [""]
    for section in (section_lm, section_preference, section_reward, section_curves, section_samples):
        lines += section(report)
    lines += ["Every number above (and per-answer KL) is in `report.json`; every answer in `answers.jsonl`.", ""]
    return "\n".join(lines)
