"""The package layering of ../shared/ARCHITECTURE.md as a test (imports parsed with ast, nothing imported).

Rules enforced (every import counts, module-level or inside a function):

* ``sp_prm``'s bottom layer -- everything in ``sp_prm`` except its training layer -- imports none of
  ``data_prep``, ``decoding``, ``experiments``, ``bench`` (reward-model scoring, formatting, models,
  configs live here and are needed by all).
* ``data_prep`` may import ``sp_prm``'s bottom layer only.
* ``sp_prm``'s training layer (``train``, ``trainer``, ``train_config``, ``evaluate``) may import
  ``sp_prm`` and ``data_prep``, not ``decoding``.
* ``decoding`` may import ``sp_prm``'s bottom layer; it imports no ``data_prep`` today and the test
  keeps it so (a needed one is a one-line change here, made on purpose).
* ``sp_prm.cli`` only dispatches: it may import any package, not ``experiments``.
* No package imports ``experiments``, ``bench`` or ``tests``; ``experiments`` and ``bench`` may import
  anything.
* No module-level import cycle between modules of the packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("sp_prm", "data_prep", "decoding")
TRAINING = {"sp_prm.train", "sp_prm.trainer", "sp_prm.train_config", "sp_prm.evaluate"}
CLI = {"sp_prm.cli"}
OURS = (*PACKAGES, "experiments", "bench", "tests")


def layer(module: str) -> str:
    top = module.split(".")[0]
    if top == "sp_prm":
        if module in CLI:
            return "cli"
        return "training" if module in TRAINING or any(module.startswith(t + ".") for t in TRAINING) else "bottom"
    return top


ALLOWED = {  # layer -> layers it may import
    "bottom": {"bottom"},
    "data_prep": {"bottom", "data_prep"},
    "training": {"bottom", "training", "data_prep"},
    # ARCHITECTURE.md's order is bottom < data_prep < training < decoding; decoding.process_value (evaluate-rm's
    # rollout values) composes the training layer's evaluation, so decoding may import training, never the reverse.
    "decoding": {"bottom", "training", "data_prep", "decoding"},
    "cli": {"bottom", "training", "data_prep", "decoding", "cli"},
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, module: str, top_level_only: bool = False) -> list[tuple[str, int]]:
    """``(imported module, line)`` of our packages' modules; ``from a.b import c`` names ``a.b.c`` if it is one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    out = []
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            out += [(f"{base}.{a.name}", node.lineno) for a in node.names]
    return [(m, line) for m, line in out if m.split(".")[0] in OURS]


def resolve(name: str, known: dict[str, Path]) -> str:
    """The longest prefix of ``name`` that is a module of ours (``decoding.search.SEARCHES`` -> ``decoding.search``)."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in known:
            return ".".join(parts[:k])
    return name


def test_every_import_respects_the_layers():
    known = modules()
    assert {"sp_prm.scoring", "data_prep.prepare", "decoding.search", "decoding.scorers.rear"} <= set(known)
    bad = []
    for module, path in known.items():
        for name, line in imports(path, module):
            top = name.split(".")[0]
            if top in ("experiments", "bench", "tests"):
                bad.append(f"{path.relative_to(REPO)}:{line}: {module} imports {name} (a package never imports {top})")
                continue
            target = resolve(name, known)
            if layer(target) not in ALLOWED[layer(module)]:
                bad.append(f"{path.relative_to(REPO)}:{line}: {module} ({layer(module)}) imports {target} "
                           f"({layer(target)}); {layer(module)} may import {sorted(ALLOWED[layer(module)])}")
    assert not bad, "\n".join(bad)


def test_no_module_level_import_cycle():
    known = modules()
    graph = {m: {resolve(n, known) for n, _ in imports(p, m, top_level_only=True)} & set(known) - {m}
             for m, p in known.items()}
    # A package's __init__ runs before any of its submodules: an edge sub -> its own package is not a cycle.
    for m in graph:
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            raise AssertionError("module-level import cycle: " + " -> ".join(cycle))


def test_the_checker_catches_a_violation(tmp_path):
    """The rules can fail: a bottom-layer module importing decoding is reported with file and line."""
    bad = tmp_path / "x.py"
    bad.write_text("import os\n\ndef f():\n    from decoding.search import SEARCHES\n")
    (name, line), = imports(bad, "sp_prm.x")
    assert (name, line) == ("decoding.search.SEARCHES", 4)
    assert layer(resolve(name, modules())) == "decoding" and "decoding" not in ALLOWED[layer("sp_prm.x")]
