"""The package's layers, read from its import statements (those inside functions too; not those
under ``if TYPE_CHECKING``, which never run): no cycle anywhere, no import that climbs from a
lower layer to a higher one, and no command that imports another command. Beside
test_no_torch.py, which guards the torch boundary."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "onnxstyle"

# Bottom to top. A module may import its own layer's modules (without a cycle) and those below.
LAYERS: list[tuple[str, ...]] = [
    ("version", "errors", "layers", "spec"),
    ("exportdir",),
    ("runtime", "reference"),
    ("export", "autoexport"),
    ("video",),
    ("workers", "serve"),
    ("commands",),
    ("cli", "__init__"),
]
# What a command module may import from its own folder: the shared layer, not another command.
COMMAND_SHARED = {"commands.options", "commands.progress", "commands.sheet"}


def _module(path: Path) -> str:
    rel = path.relative_to(PKG).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" and len(rel.parts) > 1 else rel.parts
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The package modules ``path`` imports, as dotted names below ``onnxstyle``."""
    mod = _module(path)
    package = mod.split(".")[:-1] if path.name != "__init__.py" else mod.split(".")
    if path == PKG / "__init__.py":
        package = []
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
                   for stmt in block.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:  # annotations only: never executed, so no edge of the running graph
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("onnxstyle"):
                target = node.module.removeprefix("onnxstyle").lstrip(".")
            else:
                continue
            for alias in node.names:  # `from . import inputs` imports a module
                candidate = f"{target}.{alias.name}" if target else alias.name
                found.add(candidate if _exists(candidate) else target)
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("onnxstyle.") for a in node.names if a.name.startswith("onnxstyle."))
    return {m for m in found if m and m != mod}


def _exists(module: str) -> bool:
    p = PKG.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def _layer(module: str) -> int:
    top = module.split(".")[0]
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: in no layer; add it to LAYERS")


GRAPH = {_module(p): _imports(p) for p in sorted(PKG.rglob("*.py"))}


def test_the_graph_is_read() -> None:
    assert len(GRAPH) > 50
    assert "runtime.settings" in GRAPH["commands.options"] and "commands.options" in GRAPH["commands.stylize"]
    assert "runtime.inputs" in GRAPH["workers.worker"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_import_climbs_to_a_higher_layer(module: str) -> None:
    up = [m for m in GRAPH[module] if _layer(m) > _layer(module)]
    assert not up, f"{module} (layer {_layer(module)}) imports {up} from above"


def test_no_command_imports_another_command() -> None:
    for module, deps in GRAPH.items():
        if module.startswith("commands.") and module not in COMMAND_SHARED:
            others = {d for d in deps if d.startswith("commands") and d not in COMMAND_SHARED}
            assert not others, f"{module} imports {others}"
    for shared in COMMAND_SHARED:
        assert not {d for d in GRAPH[shared] if d.startswith("commands") and d not in COMMAND_SHARED}, shared


def test_there_is_no_cycle() -> None:
    """Depth-first search over the whole graph; a back edge is a cycle, named in full."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(GRAPH.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " → ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)


def test_the_checker_sees_a_cycle_and_a_climb() -> None:
    """The walk itself can fail: a planted cycle and a planted upward import are caught."""
    saved = dict(GRAPH)
    try:
        GRAPH["runtime.settings"] = GRAPH["runtime.settings"] | {"runtime.stylizer"}
        GRAPH["runtime.stylizer"] = GRAPH["runtime.stylizer"] | {"runtime.settings"}
        with pytest.raises(AssertionError, match="import cycle"):
            test_there_is_no_cycle()
        GRAPH["runtime.plan"] = GRAPH["runtime.plan"] | {"commands.options"}
        with pytest.raises(AssertionError, match="from above"):
            test_no_import_climbs_to_a_higher_layer("runtime.plan")
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
