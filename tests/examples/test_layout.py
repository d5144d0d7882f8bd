"""The example's layout: pipelines, apps and build tools apart, and no import cycle anywhere in it.

Imports are read from the source (those inside functions too), so a cycle hidden in a lazy
import counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

from .helpers import REPO_ROOT

PACKAGE = "examples.stable_diffusion"
ROOT = REPO_ROOT / "examples" / "stable_diffusion"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The example's modules that ``path`` imports, wherever the import statement stands."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from . import x` may name a module; `from .m import x` names m.
            targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        found |= {target for target in targets if target.startswith(PACKAGE) and target in MODULES}
    found.discard(name)
    return found


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_no_import_cycle() -> None:
    # Depth-first search; a grey node met again closes a cycle.
    colour: dict[str, str] = {}
    cycles: list[list[str]] = []

    def visit(node: str, trail: list[str]) -> None:
        colour[node] = "grey"
        for target in sorted(GRAPH[node]):
            if colour.get(target) == "grey":
                cycles.append([*trail[trail.index(target) :], target] if target in trail else [node, target])
            elif target not in colour:
                visit(target, [*trail, target])
        colour[node] = "black"

    for module in sorted(GRAPH):
        if module not in colour:
            visit(module, [module])
    assert not cycles, cycles


def test_the_pipelines_and_the_build_tools_know_nothing_of_the_apps() -> None:
    for name, targets in GRAPH.items():
        if name.startswith(f"{PACKAGE}.pipelines"):
            assert not {t for t in targets if not t.startswith(f"{PACKAGE}.pipelines")}, (name, targets)
        if name.startswith(f"{PACKAGE}.build"):
            assert not {t for t in targets if not t.startswith(f"{PACKAGE}.build")}, (name, targets)


def test_the_graph_is_read() -> None:
    # The reader finds what it should, or the tests above would pass on nothing.
    assert f"{PACKAGE}.apps.service" in GRAPH[f"{PACKAGE}.apps.serve"]
    assert f"{PACKAGE}.build.export" in GRAPH[f"{PACKAGE}.build.cache"]  # a lazy import, inside a function
    assert f"{PACKAGE}.pipelines._loop" in GRAPH[f"{PACKAGE}.pipelines._base"]
    assert f"{PACKAGE}.apps.cli" in GRAPH[f"{PACKAGE}.txt2img"]
