"""Talk to a chat model in the terminal; the answer streams in token by token as it is sampled.

    python -m apps.chat --model runs/tiny/ppo --temperature 0.7 --top-p 0.9 --max-new-tokens 200
    python -m apps.chat --model runs/tiny/sft --prompt "What does json.dumps do?"   # one answer, exit
    echo "hello" | python -m apps.chat --model runs/tiny/sft                        # scripts: piped stdin
    python -m apps.chat --model runs/my-writing/pretrain --complete "Once upon a time" --temperature 1.2

The conversation is kept and re-rendered with the model's chat template every turn. Commands
change sampling mid-conversation (/help lists them). Ctrl-C while an answer streams stops that
answer; Ctrl-C or end of input at the prompt leaves. Answers go to stdout, everything else
(banner, command replies, --show-probs tables) to stderr, so piped output is just the answers.
`--complete TEXT` continues a text with no chat template at all: what a pretrained model does.
/alt K, /good and /bad store what the person thinks of the answers in the model's run folder
(runs/<name>/feedback; apps/chat_feedback.py, data/feedback.py) for the reward stage to train on.
"""

from __future__ import annotations

import argparse
import math
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoConfig, AutoTokenizer
from transformers.utils import logging as hf_logging

from apps.chat_feedback import ChatFeedback
from data.feedback import LABELER_NAME, model_fingerprint, store_dir
from pipeline.artifacts.store import resolve_model_source
from pipeline.errors import UserError, main_guard
from pipeline.lm.chat_format import encode_chat
from pipeline.lm.generation import chat_stop_ids, context_length, eos_ids_of, generate, shape_logits
from pipeline.lm.loading import loading
from pipeline.lm.model import count_parameters, load_causal_lm
from pipeline.lm.tokenizer import CHAT_TEMPLATE, ROLE_TOKENS, ensure_chat_ready
from pipeline.lm.word_tokenizer import count_unknown
from pipeline.runtime.device import pick_device

HELP = """commands:
  /temp X       temperature (0 = greedy: always the most likely token)
  /top_p X      nucleus sampling: keep the fewest tokens whose probability reaches X (1 = off)
  /top_k N      keep the N most likely tokens (0 = off)
  /max N        maximum tokens per answer
  /probs N      show the top candidates for the first N tokens of each answer (0 = off)
  /system TEXT  set the system message (and start over)
  /reset        forget the conversation
  /alt K        K answers to your last message; rank them best first (2 1=3: tie), stored as feedback
  /good, /bad   rate the last answer, stored as feedback (text after it is kept as the reason)
  /help         this list
  /quit         leave (also Ctrl-D, or Ctrl-C at the prompt)"""


@dataclass
class Sampling:
    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 200

    def describe(self) -> str:
        t = "0 (greedy)" if self.temperature <= 0 else f"{self.temperature:g}"
        return f"temperature {t}, top_p {self.top_p:g}, top_k {self.top_k}, max {self.max_new_tokens} tokens"


def load_chat_model(path: str, device: torch.device):
    """The causal LM and a chat-ready tokenizer at `path`, or a UserError saying why not."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{p} is a file; --model needs a model directory such as runs/tiny/sft.")
    if not p.exists() and (path.startswith((".", "/", "~", "runs")) or path.count("/") != 1):
        raise UserError(f"{p} does not exist. --model needs a model directory: runs/<preset>/sft after "
                        "`make sft`, runs/<preset>/ppo after `make ppo`, or any Hugging Face model directory.")
    source, _ = resolve_model_source(path, p, "make sft")
    with loading(source, "model config"):
        config = AutoConfig.from_pretrained(source)
    archs = getattr(config, "architectures", None) or []
    if archs and not any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise UserError(
            f"{source} holds a {archs[0]}, not a language model that writes text (a reward model scores "
            "answers, it cannot chat). Point --model at runs/<preset>/sft or runs/<preset>/ppo."
        )
    with loading(source, "tokenizer", model=False, tokenizer=True):
        tok = AutoTokenizer.from_pretrained(source)
    dtype = torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    model = load_causal_lm(source, dtype=dtype)
    if not tok.chat_template:
        if all(t in tok.get_vocab() for t in ROLE_TOKENS):
            tok.chat_template = CHAT_TEMPLATE
        else:
            for change in ensure_chat_ready(tok):
                print(f"note: {change}; this model never saw these tokens, expect poor answers", file=sys.stderr)
            model.resize_token_embeddings(len(tok))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return model.to(device).eval(), tok


class Chat:
    """One conversation with a model: history, sampling settings, streaming output."""

    def __init__(self, model, tokenizer, sampling: Sampling, *, system: str | None = None, seed: int | None = None,
                 show_probs: int = 0, out=None, err=None, feedback=None):
        self.model, self.tok, self.sampling = model, tokenizer, sampling
        self.seed, self.feedback = seed, feedback  # feedback: apps.chat_feedback.ChatFeedback or None
        self.stdin = None  # where loop() reads the person's lines
        self.system, self.show_probs = system, show_probs
        self.out, self.err = out or sys.stdout, err or sys.stderr
        self.generator = torch.Generator(device=next(model.parameters()).device)
        self.generator.manual_seed(seed if seed is not None else torch.seed() % 2**63)
        self.eos_ids = chat_stop_ids(model, tokenizer)
        self.context = context_length(model)
        self.history: list[dict] = []

    def reset(self) -> None:
        self.history = []

    def asked(self) -> list[dict]:
        """The conversation the last answer replies to, as the person saw it (system message included)."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.history[:-1]

    def _render(self, messages: list[dict]) -> list[int]:
        return encode_chat(self.tok, messages, add_generation_prompt=True)

    def prompt_ids(self) -> tuple[list[int], int]:
        """The conversation as token ids, and the answer budget that still fits the context.

        The oldest turns are dropped first when the conversation outgrows the context window.
        """
        budget = min(self.sampling.max_new_tokens, max(1, self.context // 2))
        head = [{"role": "system", "content": self.system}] if self.system else []
        turns = list(self.history)
        ids = self._render(head + turns)
        while len(ids) + budget > self.context and len(turns) > 1:
            turns = turns[2:] if len(turns) > 2 else turns[-1:]
            ids = self._render(head + turns)
        if len(ids) + budget > self.context:
            ids = ids[-(self.context - budget):]  # one huge message: keep its end
        return ids, min(self.sampling.max_new_tokens, self.context - len(ids))

    def reply(self, user_text: str) -> str:
        """Answer one user message, streaming it to `out`; Ctrl-C stops the answer early."""
        self.history.append({"role": "user", "content": user_text})
        ids, budget = self.prompt_ids()
        tokens: list[int] = []
        printed = ""
        probe: list[tuple[torch.Tensor, int]] = []
        s = self.sampling

        def on_step(step, logits, picked):
            nonlocal printed
            if step < self.show_probs:
                probe.append((logits[0].float().cpu(), int(picked[0])))
            token = int(picked[0])
            if token in self.eos_ids:
                return
            tokens.append(token)
            text = self.tok.decode(tokens, skip_special_tokens=True)
            if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                self.out.write(text[len(printed):])
                self.out.flush()
                printed = text

        stopped = False
        try:
            generate(self.model, [ids], max_new_tokens=budget, eos_ids=self.eos_ids, pad_id=self.tok.pad_token_id,
                     temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, generator=self.generator,
                     on_step=on_step)
        except KeyboardInterrupt:
            stopped = True
        answer = self.tok.decode(tokens, skip_special_tokens=True)
        self.out.write(answer[len(printed):] + "\n")
        self.out.flush()
        if stopped:
            print("[stopped: Ctrl-C ends the answer; Ctrl-C at the prompt or /quit leaves]", file=self.err)
        self.history.append({"role": "assistant", "content": answer})
        if probe:
            print(self.probability_table(probe), file=self.err)
        return answer

    def probability_table(self, probe: list[tuple[torch.Tensor, int]], k: int = 5) -> str:
        """The top candidates for each of the first tokens, at T=1 and as reshaped by the settings.

        p = softmax(logits / T): the logits are the model's; the temperature only rescales them,
        sharpening (T < 1) or flattening (T > 1) the distribution before a token is drawn.
        """
        s = self.sampling
        shaped = "argmax (greedy)" if s.temperature <= 0 else f"softmax(logits/{s.temperature:g})"
        if s.temperature > 0 and (s.top_k or s.top_p < 1):
            shaped += f", top_k {s.top_k}, top_p {s.top_p:g}"
        lines = [f"next-token candidates: raw softmax(logits) at T=1  ->  sampled from {shaped}"]
        for step, (logits, picked) in enumerate(probe):
            raw = logits.softmax(-1)
            used = raw if s.temperature <= 0 else shape_logits(logits, s.temperature, s.top_k, s.top_p).softmax(-1)
            top = torch.topk(raw, k).indices.tolist()
            cells = [f"{self.tok.decode([t])!r} {100 * raw[t]:.1f}%->{100 * used[t]:.1f}%" for t in top]
            lines.append(f"  token {step + 1}: picked {self.tok.decode([picked])!r:<12} | " + "  ".join(cells))
        logits = probe[0][0]
        top = torch.topk(logits, 3).indices.tolist()
        sweep = []
        for t in (0.5, 1.0, 2.0):
            p = (logits / t).softmax(-1)
            sweep.append(f"T={t:g}: " + " ".join(f"{self.tok.decode([i])!r} {100 * p[i]:.0f}%" for i in top))
        lines.append("  token 1 at other temperatures (lower T sharpens, higher T flattens): " + " | ".join(sweep))
        return "\n".join(lines)

    def command(self, line: str) -> bool:
        """Apply a /command; False means leave."""
        name, _, arg = line[1:].partition(" ")
        name, arg = name.strip().lower(), arg.strip()
        if name in ("quit", "exit", "q"):
            return False
        if name == "help":
            print(HELP, file=self.err)
            return True
        if name == "reset":
            self.reset()
            print("conversation cleared", file=self.err)
            return True
        if name in ("alt", "good", "bad"):
            if self.feedback is None:
                print("feedback is off in this chat", file=self.err)
            elif name == "alt":
                self.feedback.alternatives(self, arg, self.read_line, self.out, self.err)
            else:
                self.feedback.rate(self, name == "good", arg, self.err)
            return True
        if name == "system":
            self.system = arg or None
            self.reset()
            print(f"system message {'set' if arg else 'removed'}; conversation cleared", file=self.err)
            return True
        setters = {"temp": ("temperature", float, 0.0, None), "temperature": ("temperature", float, 0.0, None),
                   "top_p": ("top_p", float, 0.0, 1.0), "top_k": ("top_k", int, 0, None),
                   "max": ("max_new_tokens", int, 1, None), "probs": (None, int, 0, None)}
        if name not in setters:
            print(f"unknown command /{name}\n{HELP}", file=self.err)
            return True
        attr, kind, low, high = setters[name]
        try:
            value = kind(arg)
            if not math.isfinite(value) or value < low or (high is not None and value > high):
                raise ValueError
        except ValueError:
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            print(f"/{name} needs a{'n integer' if kind is int else ' number'} {bound}, got {arg!r}",
                  file=self.err)
            return True
        if attr is None:
            self.show_probs = value
            print(f"showing probabilities for the first {value} tokens" if value else "probabilities off",
                  file=self.err)
        else:
            setattr(self.sampling, attr, value)
            print(self.sampling.describe(), file=self.err)
        return True

    def read_line(self, prompt: str) -> str | None:
        """One line from the person (None at the end of input); piped input is read without a prompt."""
        stdin = self.stdin or sys.stdin
        try:
            line = input(prompt) if stdin.isatty() else stdin.readline()
        except (EOFError, KeyboardInterrupt):
            print(file=self.err)
            return None
        return None if not stdin.isatty() and line == "" else line

    def loop(self, stdin=None) -> None:
        self.stdin = stdin or sys.stdin
        interactive = self.stdin.isatty()
        while True:
            line = self.read_line("you> ")
            if line is None:
                return  # end of input, Ctrl-D or Ctrl-C at the prompt
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if not self.command(line):
                    return
                continue
            if interactive:
                self.out.write("bot> ")
            self.reply(line)


def complete(model, tok, text: str, sampling: Sampling, *, seed: int | None = None, out=None) -> str:
    """Continue `text` as a pretrained model does (no chat template), streaming it to `out`; returns
    the whole text. The model sees EOS + the text's tokens: pretraining put EOS before every document.
    The prompt is echoed as given; the continuation as the tokenizer writes it (a word vocabulary
    normalises whitespace and writes a word it does not know as <|unk|>)."""
    out = out or sys.stdout
    budget = min(sampling.max_new_tokens, max(1, context_length(model) // 2))
    body = tok(text, add_special_tokens=False)["input_ids"][-(context_length(model) - budget - 1):]
    eos_ids = eos_ids_of(model, tok)
    generator = torch.Generator(device=next(model.parameters()).device)
    generator.manual_seed(seed if seed is not None else torch.seed() % 2**63)
    unknown = count_unknown(tok, body)
    if unknown:
        print(f"note: {unknown} word(s) of the prompt are not in the vocabulary; the model sees <|unk|>",
              file=sys.stderr)
    tokens: list[int] = []
    head = printed = tok.decode(body, skip_special_tokens=False)  # what `text` reads as; `text` is echoed
    out.write(text)

    def show(step=None, logits=None, picked=None, last=False):
        nonlocal printed
        if picked is not None and int(picked[0]) not in eos_ids:
            tokens.append(int(picked[0]))
        whole = tok.decode(body + tokens, skip_special_tokens=False)
        if (last or not whole.endswith("\ufffd")) and whole.startswith(printed):  # wait for a whole character
            out.write(whole[len(printed):])
            out.flush()
            printed = whole

    try:
        generate(model, [[tok.eos_token_id, *body]], max_new_tokens=budget, eos_ids=eos_ids,
                 pad_id=tok.pad_token_id, temperature=sampling.temperature, top_k=sampling.top_k,
                 top_p=sampling.top_p, generator=generator, on_step=show)
    except KeyboardInterrupt:
        pass
    show(last=True)
    out.write("\n")
    out.flush()
    return text + printed[len(head):]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m apps.chat", description="Talk to a chat model.",
                                 epilog=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (runs/<preset>/sft, .../ppo, any HF dir)")
    ap.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--max-new-tokens", type=int, default=200)
    ap.add_argument("--prompt", help="answer this one message and exit")
    ap.add_argument("--complete", metavar="TEXT", help="continue TEXT with no chat template (pretrained models), exit")
    ap.add_argument("--system", help="system message")
    ap.add_argument("--show-probs", type=int, nargs="?", const=3, default=0, metavar="N",
                    help="print the top next-token candidates for the first N tokens (default 3)")
    ap.add_argument("--seed", type=int, default=None, help="fix the sampling seed (reproducible answers)")
    ap.add_argument("--feedback-dir", metavar="DIR",
                    help="store /alt, /good and /bad in DIR/feedback.jsonl (default: the model's run folder)")
    ap.add_argument("--no-feedback", action="store_true", help="store no feedback")
    ap.add_argument("--labeler", default="person", help="your name in the stored feedback (default person)")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args(argv)
    if args.no_feedback and args.feedback_dir:
        raise UserError("--no-feedback and --feedback-dir contradict each other; give one.")
    if not LABELER_NAME.fullmatch(args.labeler):
        raise UserError(f"--labeler {args.labeler!r}: give a name of 1 to 64 letters, digits, '.', '_' or '-'.")
    checks = (("--temperature", args.temperature, args.temperature >= 0, ">= 0 (0 = greedy)"),
              ("--top-p", args.top_p, 0 < args.top_p <= 1, "in (0, 1]"),
              ("--top-k", args.top_k, args.top_k >= 0, ">= 0 (0 = off)"),
              ("--max-new-tokens", args.max_new_tokens, args.max_new_tokens >= 1, ">= 1"))
    for flag, value, ok, allowed in checks:
        if not ok or not math.isfinite(value):  # nan fails every comparison, so it is named here too
            raise UserError(f"{flag} {value}: must be {allowed}.")
    return args


@main_guard
def main(argv=None) -> None:
    args = parse_args(argv)
    hf_logging.disable_progress_bar()
    # Ctrl-C is how a person stops an answer. A shell starts background jobs with SIGINT ignored and
    # Python keeps it so: take it back, or the chat could not be interrupted when started from a script.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        model, tok = load_chat_model(args.model, pick_device(args.device))
    except KeyboardInterrupt:
        sys.exit(130)
    sampling = Sampling(args.temperature, args.top_p, args.top_k, args.max_new_tokens)
    if args.complete is not None:
        complete(model, tok, args.complete, sampling, seed=args.seed)
        return
    if args.prompt is not None:
        Chat(model, tok, sampling, system=args.system, seed=args.seed, show_probs=args.show_probs).reply(args.prompt)
        return
    where, note = store_dir(args.model, args.feedback_dir, args.no_feedback)
    feedback = ChatFeedback(where, note, model=args.model, fingerprint=model_fingerprint(args.model),
                            labeler=args.labeler)
    chat = Chat(model, tok, sampling, system=args.system, seed=args.seed, show_probs=args.show_probs,
                feedback=feedback)
    print(f"{args.model}: {count_parameters(model) / 1e6:.2f}M parameters, context {chat.context} tokens; "
          f"{sampling.describe()}. /help for commands.\n{note}", file=sys.stderr)
    chat.loop()


if __name__ == "__main__":
    main()
