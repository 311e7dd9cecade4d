"""Loading models and tokenizers from folders a user names, with one clear line when they are broken.

The libraries report a truncated `model.safetensors` as "incomplete metadata, file not fully covered",
a missing `tokenizer.json` as a missing sentencepiece install, and a corrupt pickle with advice to
turn `weights_only` off. Here a local folder is checked file by file first, so the error names the
file and what to do; any library failure left over becomes one UserError line too.

    with loading(source, "causal LM"):
        model = AutoModelForCausalLM.from_pretrained(source)
"""

from __future__ import annotations

import contextlib
import json
import re
from pathlib import Path

from pipeline.errors import UserError

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "spiece.model")
_UNSAFE_ADVICE = re.compile(r"[^.]*weights_only[^.]*\.?", re.IGNORECASE)
_REBUILD = "re-run the stage that wrote it (or copy the folder again)"


def _json_file(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path} is corrupt ({what} is not valid JSON: {e}); {_REBUILD}.") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is corrupt ({what} must be a JSON object); {_REBUILD}.")
    return data


def _check_safetensors(path: Path) -> None:
    from safetensors import safe_open

    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes): the weights were never written or were cut off; {_REBUILD}.")
    try:
        with safe_open(str(path), framework="pt") as f:
            f.keys()
    except Exception as e:  # safetensors raises its own SafetensorError (and OSError) for a bad header
        raise UserError(f"{path} is truncated or corrupt ({one_line(e)}); {_REBUILD}.") from None


def check_model_dir(path: str | Path) -> None:
    """A local model folder has a readable config.json and complete weights, or a UserError names the file."""
    d = Path(path)
    if not d.is_dir():
        return  # a hub name: the library reports what is wrong
    if not (d / "config.json").is_file():
        raise UserError(f"{d} has no config.json, so it is not a Hugging Face model folder; point at a stage "
                        "artifact such as runs/<preset>/sft or a folder written by save_pretrained.")
    _json_file(d / "config.json", "config.json")
    weights = [d / name for name in WEIGHT_FILES if (d / name).is_file()]
    if not weights:
        raise UserError(f"{d} has no weights ({' or '.join(WEIGHT_FILES[:3])}); {_REBUILD}.")
    for w in weights:
        if w.name.endswith(".index.json"):
            index = _json_file(w, "the shard index")
            shards = sorted(set((index.get("weight_map") or {}).values()))
            missing = [s for s in shards if not (d / s).is_file()]
            if missing:
                raise UserError(f"{d} lacks the weight shard {missing[0]} listed in {w.name}; {_REBUILD}.")
            for s in shards:
                if s.endswith(".safetensors"):
                    _check_safetensors(d / s)
        elif w.suffix == ".safetensors":
            _check_safetensors(w)


def check_tokenizer_dir(path: str | Path) -> None:
    """A local folder holds tokenizer files that parse, or a UserError names what is missing or broken."""
    d = Path(path)
    if not d.is_dir():
        return
    if not any((d / name).is_file() for name in TOKENIZER_FILES):
        raise UserError(f"{d} has no tokenizer.json (nor any other tokenizer file); save the tokenizer next to "
                        "the model with tokenizer.save_pretrained, or re-run the stage that wrote the folder.")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (d / name).is_file():
            data = _json_file(d / name, name)
            if name == "tokenizer.json" and "model" not in data:  # JSON, but no tokenizer's: the library's KeyError
                raise UserError(f"{d / name} is not a tokenizer (no \"model\" entry); {_REBUILD}.")
    _check_chat_templates(d)


def _check_chat_templates(d: Path) -> None:
    """A chat template that does not compile fails at the first message, as a Jinja traceback: name it now."""
    from jinja2 import TemplateSyntaxError

    try:  # the library's own compiler: its extensions ({% generation %}) are part of the language it renders
        from transformers.utils.chat_template_utils import _compile_jinja_template
    except ImportError:  # another version: the template is checked where it is first rendered
        return
    found = [(d / "chat_template.jinja", (d / "chat_template.jinja").read_text(errors="replace"))] \
        if (d / "chat_template.jinja").is_file() else []
    config = _json_file(d / "tokenizer_config.json", "tokenizer_config.json") \
        if (d / "tokenizer_config.json").is_file() else {}
    inline = config.get("chat_template")
    for t in inline if isinstance(inline, list) else [{"template": inline}] if inline else []:
        found.append((d / "tokenizer_config.json", t.get("template") if isinstance(t, dict) else t))
    for where, text in found:
        try:
            _compile_jinja_template(str(text))
        except TemplateSyntaxError as e:
            raise UserError(f"{where}: the chat template does not compile (line {e.lineno}: {e.message}); fix it "
                            "or remove it to use the pipeline's own.") from None


def one_line(e: BaseException, limit: int = 300) -> str:
    """A library exception as one short line, without advice to load pickles unsafely."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = _UNSAFE_ADVICE.sub("", text).strip() or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def loading(source: str | Path, what: str, *, model: bool = True, tokenizer: bool = False):
    """Check a local folder first, then turn any library failure while loading into one UserError line."""
    if Path(source).is_file():
        raise UserError(f"{source} is a file; the {what} is loaded from the folder that holds it and its "
                        f"companions (e.g. {Path(source).parent}).")
    if model:
        check_model_dir(source)
    if tokenizer:
        check_tokenizer_dir(source)
    try:
        yield
    except UserError:
        raise
    except (OSError, ValueError, RuntimeError, EOFError) as e:  # a missing, unreadable or malformed file
        import torch

        if isinstance(e, torch.OutOfMemoryError):
            raise
        raise UserError(f"could not load the {what} from '{source}': {one_line(e)}") from e  # RLHF_DEBUG shows e
    except Exception as e:  # safetensors' and pickle's own error types: still the user's file
        if type(e).__module__.split(".")[0] not in ("safetensors", "pickle", "_pickle"):
            raise
        raise UserError(f"could not load the {what} from '{source}': {one_line(e)}") from e


_HEADS = ("score", "classifier")  # where AutoModelForSequenceClassification keeps the scalar head


def _safetensors_keys(d: Path) -> set[str] | None:
    """The tensor names of a local safetensors checkpoint, read from its headers (no weights loaded)."""
    from safetensors import safe_open

    if (d / "model.safetensors.index.json").is_file():
        return set(_json_file(d / "model.safetensors.index.json", "the shard index").get("weight_map") or {})
    if (d / "model.safetensors").is_file():
        with safe_open(str(d / "model.safetensors"), framework="pt") as f:
            return set(f.keys())
    return None


def _refuse_headless(source, what: str, head: str, archs: list[str] | None) -> None:
    raise UserError(f"{source} is not a trained reward model: its checkpoint ({', '.join(archs or ['?'])}) has no "
                    f"score head ({head}), so the {what} would score with random weights. Give a folder written by "
                    "`make reward` (runs/<preset>/reward).")


def require_causal_lm(source: str | Path, what: str = "causal LM") -> None:
    """Refuse, from config.json and the safetensors headers alone, a local folder that is not a language model
    that writes text: a reward model (a score head, no LM head) would be loaded with a random LM head and
    trained or evaluated as if it were one."""
    d = Path(source)
    if not d.is_dir() or not (d / "config.json").is_file():
        return  # a hub name (or no config): the library, through `loading`, says what it lacks
    check_model_dir(d)  # a truncated or empty weights file is named before its header is read
    archs = _json_file(d / "config.json", "config.json").get("architectures") or []
    keys = _safetensors_keys(d) or set()
    scorer = any(a.endswith(("ForSequenceClassification", "ForTokenClassification")) for a in archs) or (
        any(k.split(".")[0] in _HEADS for k in keys) and not any("lm_head" in k for k in keys))
    if scorer:
        raise UserError(f"{source} holds a {archs[0] if archs else 'model with a score head'}, not a language model "
                        f"that writes text (a reward model scores answers); the {what} must be one: point it at "
                        "runs/<preset>/sft, runs/<preset>/pretrain or any causal LM folder.")


def require_score_head(source: str | Path, what: str = "reward model") -> None:
    """Refuse, before anything is loaded or generated, a local checkpoint without a trained scalar head."""
    d = Path(source)
    if not d.is_dir():
        return  # a hub name: load_sequence_scorer checks what the library reports missing
    check_model_dir(d)
    keys = _safetensors_keys(d)
    if keys is not None and not any(part in _HEADS for k in keys for part in k.split(".")[:-1]):
        archs = _json_file(d / "config.json", "config.json").get("architectures")
        _refuse_headless(source, what, "score.weight", archs)


def load_sequence_scorer(source: str | Path, what: str, *, trained_head: bool, **kwargs):
    """AutoModelForSequenceClassification with one output; with `trained_head`, refuse a checkpoint
    whose score head is missing (a causal LM, say): the library would silently start a random one."""
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if trained_head:
        require_score_head(source, what)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the library's load report of a missing head: judged below instead
    try:
        with loading(source, what):
            model, info = AutoModelForSequenceClassification.from_pretrained(
                str(source), num_labels=1, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    head = [k for k in info.get("missing_keys", ()) if k.split(".")[0] in _HEADS]
    if trained_head and head:  # a hub checkpoint: only the library can say what it lacked
        _refuse_headless(source, what, head[0], getattr(model.config, "architectures", None))
    return model
