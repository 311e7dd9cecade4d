"""Harvest the documentation that ships inside Python: language-reference topics and docstrings.

Everything is read at run time from the interpreter that runs the pipeline (nothing is copied
into the repository), so the demo data is as old or new as the user's Python. Harvesting is
deterministic for a given Python version: modules, classes and members are visited in sorted
order and no set or hash order leaks into the result.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import sys
import warnings
from dataclasses import dataclass

# The "common" subset: objects a Python user meets in the first weeks. Kept small enough that a
# 1-2M parameter model reads every document many times in a few minutes of CPU pretraining.
COMMON_MODULES = (
    "builtins", "os.path", "json", "re", "math", "itertools", "collections", "textwrap", "random",
    "string", "functools", "pathlib", "shutil", "glob", "heapq", "bisect", "copy", "statistics",
    "operator", "time", "fnmatch", "csv", "os", "sys", "datetime", "subprocess", "tempfile", "hashlib",
    "base64", "uuid", "dataclasses", "enum", "contextlib", "pprint", "struct", "pickle", "fractions",
    "calendar", "zipfile", "typing", "urllib.parse", "argparse", "io", "threading", "traceback",
    "secrets", "queue", "gzip", "zlib", "array",
)
# Builtin classes whose methods are documented in the common subset (other builtins: class doc only).
COMMON_BUILTIN_CLASSES = (
    "str", "list", "dict", "set", "frozenset", "tuple", "int", "float", "bytes", "bytearray", "range",
    "enumerate", "zip", "object", "complex", "bool", "slice", "memoryview", "type", "property",
)
# Language-reference topics in the common subset (the rest go to the "all" subset only).
COMMON_TOPICS = (
    "assert", "assignment", "augassign", "break", "continue", "function", "del", "for", "if", "while",
    "return", "pass", "import", "try", "with", "lambda", "global", "nonlocal", "raise", "yield",
    "class", "comparisons", "booleans", "lists", "dict", "strings", "string-methods", "typesseq",
    "typesmapping", "truth", "exceptions", "formatstrings", "slicings", "calls", "else",
    "in", "integers", "floating", "numbers", "specialnames", "typesfunctions", "operator-summary",
)
# Importing these has side effects (opens a browser, prints, needs a display) or is useless here.
_SKIP_MODULES = {
    "antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "ensurepip", "venv",
    "lib2to3", "pydoc_data", "xxsubtype", "xxlimited", "msvcrt", "winreg", "winsound", "_winapi",
    "nt", "test", "sre_compile", "sre_constants", "sre_parse", "__future__", "__hello__",
    "__phello__", "pyexpat", "crypt", "nis", "spwd", "ossaudiodev", "readline", "rlcompleter",
    "encodings", "distutils",  # codec tables; distutils is a setuptools shim here, not the stdlib
}
_FUNCTION_REPR = re.compile(r"<(?:built-in )?(?:function|method|class) '?([\w.]+)'?(?: at 0x[0-9a-fA-F]+)?>")
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_SIGNATURE_LINE = re.compile(r"^[A-Za-z_][\w.]*\(.*\)(\s*->\s*.+)?$")


@dataclass(frozen=True)
class Doc:
    """One documented object (or one language-reference topic)."""

    name: str  # what a user would type: len, str.split, os.path.join, topic:assert
    kind: str  # topic | module | class | function | method
    parent: str  # the module or class it belongs to (siblings share a parent)
    signature: str  # e.g. "textwrap.dedent(text)"; "" when unknown
    docstring: str  # cleaned docstring (or topic text)

    @property
    def text(self) -> str:
        """The pretraining document: the name (with signature) on the first line, then the doc."""
        if self.kind == "topic":
            return self.docstring
        head = self.signature or self.name
        if self.kind == "class":
            head = "class " + head
        elif self.kind == "module":
            head = "module " + self.name
        return f"{head}\n\n{self.docstring}"


def _clean(doc: str | None) -> str:
    if not doc or not isinstance(doc, str):
        return ""
    return inspect.cleandoc(doc).strip()


def _split_signature(name: str, doc: str) -> tuple[str, str]:
    """Old-style C docstrings start with `S.find(sub[, start]) -> int`; pull that line out."""
    lines = doc.split("\n")
    head = []
    while lines and _SIGNATURE_LINE.match(lines[0].strip()) and len(lines[0]) < 200:
        head.append(lines.pop(0).strip())
    while lines and not lines[0].strip():
        lines.pop(0)
    if not head:
        return "", doc
    short = name.rsplit(".", 1)[-1]
    sig = head[0]
    # `S.find(...)` / `find(...)` -> the qualified name the user types.
    sig = re.sub(r"^[\w.]*?" + re.escape(short) + r"(?=\()", name, sig, count=1)
    return sig, "\n".join(lines).strip()


def _signature(name: str, obj) -> str:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sig = str(inspect.signature(obj))
    except Exception:  # signature() evaluates defaults; C modules can fail in many ways
        return ""
    sig = _ADDRESS.sub("", _FUNCTION_REPR.sub(r"\1", sig))  # memory addresses differ from run to run
    return f"{name}{sig}" if len(sig) < 200 else ""


def _make_doc(name: str, kind: str, parent: str, obj) -> Doc | None:
    doc = _clean(getattr(obj, "__doc__", None))
    if not doc:
        return None
    sig_from_doc, doc = _split_signature(name, doc)
    if not doc:
        return None
    sig = _signature(name, obj) if kind != "module" else ""
    return Doc(name=name, kind=kind, parent=parent, signature=sig or sig_from_doc, docstring=doc)


def _import(modname: str):
    # No stdout redirection here: it is process-wide and would swallow other threads' output. The
    # modules that print on import (this, __hello__) are in _SKIP_MODULES instead.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(modname)
    except Exception:  # any import failure (missing C extension, platform module) just skips it
        return None


def _belongs(obj, mod, modname: str) -> bool:
    """Defined in this module (or its C accelerator, e.g. functools.reduce lives in _functools)."""
    owner = getattr(obj, "__module__", None)
    if owner is None and inspect.ismethod(obj):  # random.choice is a bound method of a Random
        owner = getattr(obj.__func__, "__module__", None)
    last = modname.rsplit(".", 1)[-1]
    if modname == "os" and owner in ("posix", "nt"):  # os re-exports the platform module's functions
        return True
    return owner in (modname, mod.__name__, "_" + last, "_" + mod.__name__)


def _public(name: str) -> bool:
    return not name.startswith("_")


def _class_docs(qual: str, cls) -> list[Doc]:
    docs = []
    d = _make_doc(qual, "class", qual.rsplit(".", 1)[0] if "." in qual else "builtins", cls)
    if d:
        docs.append(d)
    for attr in sorted(vars(cls)):
        if not _public(attr):
            continue
        try:
            member = getattr(cls, attr)
        except Exception:  # descriptors may raise anything on class access
            continue
        if inspect.isroutine(member):
            d = _make_doc(f"{qual}.{attr}", "method", qual, member)
            if d:
                docs.append(d)
    return docs


def module_docs(modname: str, class_methods: bool | tuple[str, ...] = True) -> list[Doc]:
    """The module's own doc and its public functions and classes (with their methods).

    class_methods: True for every class's methods, or a tuple of the class names to expand.
    """
    mod = _import(modname)
    if mod is None:
        return []
    docs = []
    if modname != "builtins":
        d = _make_doc(modname, "module", modname.rsplit(".", 1)[0], mod)
        if d:
            docs.append(d)
    names = getattr(mod, "__all__", None)
    names = sorted(n for n in (names if isinstance(names, (list, tuple)) else vars(mod)) if isinstance(n, str))
    for name in names:
        if not _public(name):
            continue
        # sys.excepthook & co. may be replaced at run time (pytest, IPython): document the originals.
        obj = getattr(mod, f"__{name}__", None) if modname == "sys" else None
        obj = obj if callable(obj) else getattr(mod, name, None)
        if obj is None or not (inspect.isroutine(obj) or inspect.isclass(obj)) or not _belongs(obj, mod, modname):
            continue
        if getattr(obj, "__name__", name) != name and hasattr(mod, obj.__name__):
            continue  # an alias (IOError = OSError): documented under its own name
        qual = name if modname == "builtins" else f"{modname}.{name}"
        if inspect.isclass(obj):
            expand = class_methods is True or (not isinstance(class_methods, bool) and name in class_methods)
            if expand:
                docs.extend(_class_docs(qual, obj))
            else:
                d = _make_doc(qual, "class", modname, obj)
                if d:
                    docs.append(d)
        else:
            d = _make_doc(qual, "function", modname, obj)
            if d:
                docs.append(d)
    return docs


def topic_docs(names: tuple[str, ...] | None = None) -> list[Doc]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data; the docstrings still suffice
        return []
    keys = sorted(topics) if names is None else [n for n in names if n in topics]
    return [Doc(name=f"topic:{k}", kind="topic", parent="topics", signature="", docstring=topics[k].strip())
            for k in keys if topics[k].strip()]


def _submodules(package: str) -> list[str]:
    """The public submodules of a standard-library package (tests and private modules left out)."""
    mod = _import(package)
    if mod is None or not hasattr(mod, "__path__"):
        return []
    names = []
    for info in pkgutil.walk_packages(mod.__path__, package + ".", onerror=lambda name: None):
        parts = info.name.split(".")
        if any(not _public(p) or p in ("test", "tests", "idle_test") or p.startswith("popen_") for p in parts):
            continue
        names.append(info.name)
    return names


def all_module_names() -> list[str]:
    tops = sorted(n for n in getattr(sys, "stdlib_module_names", ()) if _public(n) and n not in _SKIP_MODULES)
    names = set(tops) | set(COMMON_MODULES)
    for top in tops:
        names.update(_submodules(top))
    return sorted(names)


def harvest(subset: str) -> list[Doc]:
    """All documents of a subset, de-duplicated by docstring (inherited docs repeat).

    When two objects share a docstring the first in visiting order keeps it (modules in the order
    listed, members sorted), so the kept name is stable across runs.
    """
    if subset == "common":
        docs = topic_docs(COMMON_TOPICS)
        for modname in COMMON_MODULES:
            methods = COMMON_BUILTIN_CLASSES if modname == "builtins" else True
            docs.extend(module_docs(modname, class_methods=methods))
    elif subset == "all":
        docs = topic_docs(None)
        for modname in all_module_names():
            docs.extend(module_docs(modname, class_methods=True))
    else:
        raise ValueError(f"unknown subset {subset!r}")
    seen_text: set[str] = set()
    seen_name: set[str] = set()
    unique = []
    for d in docs:
        if d.docstring in seen_text or d.name in seen_name:
            continue
        seen_text.add(d.docstring)
        seen_name.add(d.name)
        unique.append(d)
    return unique
