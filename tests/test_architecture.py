"""The layers of ARCHITECTURE.md, checked on the source: every import, at the top of a module or inside a
function, points down, no stage imports another stage, and no two modules import each other (directly or
round a loop). A lazy import is still an import: hiding a cycle inside a function does not remove it."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "data", "stages", "apps")
# pipeline's sub-packages, bottom first: each may import only those at or below it
PIPELINE_LAYERS = (("errors", "listen"), ("runtime",), ("artifacts",), ("graph",), ("config",), ("chain",), ("lm",),
                   ("judge",))


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = f
    return out


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules `path` imports (`from a.b import c` counts a.b.c when that is a module)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out |= {n for n in names if n.split(".")[0] in PACKAGES and n in known}
    return out


MODULES = modules()
GRAPH = {m: imports_of(p, set(MODULES)) - {m} for m, p in MODULES.items()}


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return next(i for i, names in enumerate(PIPELINE_LAYERS) if part in names) if module != "pipeline" else 0


def stage_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "stages" and len(parts) > 1 else None


def test_every_pipeline_subpackage_has_a_layer():
    subpackages = {p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and not p.name.startswith("__")}
    files = {p.stem for p in (ROOT / "pipeline").glob("*.py")} - {"__init__"}
    assert subpackages | files == {n for names in PIPELINE_LAYERS for n in names}


def test_pipeline_imports_no_stage_data_or_app_and_only_its_own_layers_below():
    bad = [f"{m} -> {d}" for m, deps in GRAPH.items() if m.startswith("pipeline") for d in deps
           if not d.startswith("pipeline") or layer(d) > layer(m)]
    assert bad == []


def test_data_builds_on_pipeline_only_and_apps_on_pipeline_and_data():
    bad = [f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
           if (m.startswith("data") and d.split(".")[0] not in ("data", "pipeline"))
           or (m.startswith("apps") and d.split(".")[0] not in ("apps", "pipeline", "data"))]
    assert bad == []


def test_no_stage_imports_another_stage():
    bad = [f"{m} -> {d}" for m, deps in GRAPH.items() for d in deps
           if stage_package(m) and stage_package(d) and stage_package(m) != stage_package(d)]
    assert bad == []


def test_stages_holds_only_stage_packages():
    """What stages share lives below them (pipeline/, data/), never in a module beside them."""
    assert {p.name for p in (ROOT / "stages").glob("*.py")} == {"__init__.py"}


def test_no_import_cycle():
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for d in sorted(GRAPH[m]):
            if state.get(d) == "open":
                cycles.append(" -> ".join(path[path.index(d):] + [d]))
            elif d not in state:
                visit(d, path + [d])
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m, [m])
    assert cycles == []


def test_the_checker_sees_an_upward_import(tmp_path):
    """The checks above would pass vacuously if imports were not found: this one must be."""
    assert "pipeline.artifacts.atomic" in GRAPH["pipeline.artifacts.store"]
    assert layer("pipeline.judge.scoring") > layer("pipeline.lm.model") > layer("pipeline.errors")
    fake = tmp_path / "m.py"
    fake.write_text("def f():\n    from stages.ppo.stage import main\n")
    assert imports_of(fake, set(MODULES)) == {"stages.ppo.stage"}
