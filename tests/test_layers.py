"""The house rules (docs/architecture.md): bast's floors import only downward, no two files
import each other round a loop, no private name crosses a module, and the torch-free
modules stay torch-free.

Floors, low to high: the ground (errors; conventions, fileio, options, sphere), dcase,
datasets, pipeline (stage < irs < render < features), model (targets < nets = data < runs <
evaluation < inference < train), report, demo, cli. Every import is read from the source,
function-level imports included, so a lazy import cannot hide an upward edge. Rooms of one
rank (nets and data) do not import each other.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import bast

ROOT = Path(bast.__file__).parent
RANKS = {"__init__": 0, "errors": 0, "fileio": 0.5, "options": 0.5, "conventions": 0.5, "sphere": 0.5,
         "dcase": 0.75, "datasets": 1, "pipeline": 2, "model": 3, "report": 4, "demo": 5, "cli": 6}
# The floors inside a folder: a folder's own rooms, and its loose files, by name.
INNER = {
    "pipeline": {"__init__": 0, "stage": 1, "irs": 2, "render": 3, "features": 4},
    "model": {"__init__": 0, "targets": 1, "nets": 2, "data": 2, "runs": 3, "evaluation": 4, "inference": 5,
              "train": 6},
}
# What must start without torch: the DCASE metrics, the predictions tables, Stages 1 and 2 and
# the CLI itself (the workers of a dask cluster import them; `bast-cli --help` stays quick).
TORCH_FREE = ("bast.dcase.metrics", "bast.dcase.files", "bast.model.targets.metrics", "bast.pipeline.features.featurize",
              "bast.pipeline.render.spatialize", "bast.pipeline.render.scenes", "bast.pipeline.render.conditions",
              "bast.pipeline.render.outputs", "bast.pipeline.render.recipe", "bast.pipeline.render.sampler",
              "bast.pipeline.render.scenesampler",
              "bast.pipeline.features.scenes", "bast.pipeline.irs.check", "bast.model.targets.names", "bast.report.seld",
              "bast.report.stats", "bast.cli")


def _module(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


MODULES = {_module(p): p for p in sorted(ROOT.rglob("*.py"))}


def _resolve(name: str) -> str:
    """The bast file a dotted name lands in (a module, or a package's __init__)."""
    while name not in MODULES:
        name = name.rsplit(".", 1)[0]
    return name


def _imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module file imported, name imported or '') for every bast import in `path`."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, _resolve(a.name), "") for a in node.names if a.name.startswith("bast.")]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level and node.module.split(".")[0] == "bast":
            for a in node.names:
                full = f"{node.module}.{a.name}"
                if full in MODULES:  # from bast.pipeline.features import kinds: a module
                    out.append((node.lineno, full, ""))
                else:
                    out.append((node.lineno, _resolve(node.module), a.name))
    return out


def _place(module: str) -> tuple:
    """The floors a module stands on, outermost first: bast.model.nets.bast -> (3, 2)."""
    parts = module.split(".")[1:] or ["__init__"]
    ranks = (RANKS[parts[0]],)
    inner = INNER.get(parts[0])
    if inner is not None:
        ranks += (inner[parts[1] if len(parts) > 1 else "__init__"],)
    return ranks


def _edges():
    for mod, path in MODULES.items():
        for line, target, _ in _imports(path):
            if target != mod and target != "bast" and not MODULES[target].name == "__init__.py":
                yield mod, line, target


def test_every_module_has_a_floor():
    for mod in MODULES:
        parts = mod.split(".")[1:]
        if not parts:
            continue
        assert parts[0] in RANKS, f"{mod}: a module outside the known floors; add it to RANKS"
        if parts[0] in INNER and len(parts) > 1:
            assert parts[1] in INNER[parts[0]], f"{mod}: a room outside {parts[0]}'s floors; add it to INNER"


def test_floors_import_only_downward():
    wrong = []
    for mod, line, target in _edges():
        a, b = _place(mod), _place(target)
        common = 0
        while common < min(len(a), len(b)) and a[common] == b[common] and \
                mod.split(".")[common + 1] == target.split(".")[common + 1]:
            common += 1  # the same folder at this depth: compare the next floor in
        if common < min(len(a), len(b)) and b[common] >= a[common]:
            wrong.append(f"{MODULES[mod].relative_to(ROOT.parent)}:{line}: {mod} imports {target}")
    assert not wrong, "upward or sideways imports:\n" + "\n".join(wrong)


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one file (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _circles({"a": {"b"}, "b": set()}) == []


def test_no_circle_between_files():
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, _, target in _edges():
        edges[mod].add(target)
    assert not _circles(edges), f"files that import each other round a loop: {_circles(edges)}"


def test_no_private_name_crosses_a_module():
    wrong = [f"{MODULES[mod].relative_to(ROOT.parent)}:{line}: {name} from {target}"
             for mod, path in MODULES.items() for line, target, name in _imports(path)
             if name.startswith("_") and not name.startswith("__") and target != mod]
    assert not wrong, "private names imported from another module (make them public or keep them home):\n" + \
        "\n".join(wrong)


def test_no_code_cites_the_internal_spec():
    hits = [f"{p.relative_to(ROOT.parent)}:{i}" for p in ROOT.rglob("*.py")
            for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"\bSPEC\b", line)]
    assert not hits, "user-facing code points to docs/, not the internal spec: " + ", ".join(hits)


def test_torch_free_modules_start_without_torch():
    code = (f"import sys, importlib; [importlib.import_module(m) for m in {TORCH_FREE!r}]; "
            "print(sorted(m for m in ('torch', 'matplotlib', 'distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"imported at start: {out.strip()}"
