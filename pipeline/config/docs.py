"""docs/config.md from the schema: every section and key with its type, default, range and help.

    python -m pipeline.config.docs > docs/config.md

tests/test_config_docs.py fails when the file differs from what this writes, so the page cannot drift
from the keys the loader accepts.
"""

from __future__ import annotations

from pipeline.config.fields import allowed, keys_of, sections_of, show_type, show_value
from pipeline.config.schema import RunConfig

COMMAND = "python -m pipeline.config.docs > docs/config.md"


def _prose(text: str) -> str:
    """Plain text as Markdown: `<name>` would be read as an HTML tag, a pair of `~` as strikethrough."""
    return text.replace("<", "\\<").replace("~", "\\~").replace("*", "\\*")


def _cell(text: str, code: bool = False) -> str:
    """Text in a table cell, where `|` would end the cell (escaped even inside a code span)."""
    text = text.replace("|", "\\|")
    return text if code else _prose(text)


def render() -> str:
    sections = sections_of(RunConfig)
    lines = [
        "# Configuration keys",
        "",
        f"<!-- Generated from pipeline/config/schema*.py by `{COMMAND}`; edit the schema, not this file. -->",
        "",
        "A preset (`configs/*.yaml`) sets only what differs from these defaults, and `base: other.yaml` starts",
        "it from another preset. Any key can be set on the command line as `section.key=value`",
        "(`make ppo ppo.kl_coef=0.1`, `python -m stages.sft --config configs/tiny.yaml sft.lr=3e-4`); `null`",
        "leaves an optional key unset. A value of the wrong type or outside its range is refused with the key",
        "and what is allowed. `python -m stages.<name> --help` lists the keys a stage reads.",
        "",
        "Sections: " + ", ".join(f"[{name}](#{name})" for name, _ in sections) + ".",
    ]
    for name, cls in sections:
        lines += ["", f"## {name}", ""]
        doc = " ".join((cls.__doc__ or "").split())
        if doc and not doc.startswith(f"{cls.__name__}("):
            lines += [_prose(doc), ""]
        lines += ["| key | type | default | allowed | what it does |", "|---|---|---|---|---|"]
        for k in keys_of(cls, name + "."):
            shown = allowed(k)
            lines.append(f"| `{k.name}` | {_cell(show_type(k.type))} | `{_cell(show_value(k.default), code=True)}` | "
                         f"{_cell(shown)} | {_cell(k.help)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(), end="")
