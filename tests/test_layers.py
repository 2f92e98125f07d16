"""The two layers: erasekit (the method library) never imports erasebook (the book's code); ``import erasekit`` stays
light; no private name crosses a module; no import cycle."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module_level_only: bool = False):
    """(imported module, imported names, line) for every import in ``path``, relative imports resolved."""
    mod = _module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno


def _files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def test_the_library_never_imports_the_book():
    bad = [f"{p.relative_to(ROOT)}:{line} imports {target}"
           for p in _files("erasekit") for target, names, line in _imports(p)
           if target.split(".")[0] == "erasebook"]
    assert not bad, "erasekit must not depend on the book's code:\n" + "\n".join(bad)


def test_import_erasekit_is_light_and_small():
    code = ("import sys, erasekit; heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('erasebook', 'matplotlib', 'seaborn', 'trl') or m in ('erasekit.baselines.loop', 'erasekit.asru')); "
            "print(repr((heavy, len(erasekit.__all__))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    heavy, n = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    assert heavy == [], f"import erasekit loaded {heavy}"
    assert n <= 40, f"erasekit exports {n} names at the top level (at most 40)"
    import erasekit
    assert all(hasattr(erasekit, name) for name in erasekit.__all__)


def test_no_private_name_crosses_a_module():
    bad = []
    for package in ("erasekit", "erasebook"):
        for p in _files(package):
            for target, names, line in _imports(p):
                if target.split(".")[0] in ("erasekit", "erasebook"):
                    bad += [f"{p.relative_to(ROOT)}:{line} imports {target}.{n}" for n in names
                            if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_no_import_cycle():
    graph: dict[str, set[str]] = {}
    for package in ("erasekit", "erasebook"):
        for p in _files(package):
            mod = _module_name(p)
            deps = set()
            for target, names, _ in _imports(p, module_level_only=True):
                if target.split(".")[0] not in ("erasekit", "erasebook"):
                    continue
                for n in names or [""]:  # "from . import world" imports the submodule
                    full = f"{target}.{n}" if n else target
                    deps.add(full if (ROOT / (full.replace(".", "/") + ".py")).exists() else target)
            graph[mod] = deps - {mod}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if d in graph and not (m.startswith(d + ".") and Path(ROOT / d.replace(".", "/")).is_dir()):
                if state.get(d) == 1:
                    raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
                if d not in state:
                    visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_default_prompts_are_the_worlds_training_requests():
    """erasekit ships its default requests as data (erasekit/prompts.json); the book's world still makes them."""
    from erasebook.world import make_world, safety_prompts

    sp = [s for s in safety_prompts(make_world(20, 1, seed=0)) if not s.heldout]
    shipped = json.loads((ROOT / "erasekit" / "prompts.json").read_text())
    for kind in ("harmful", "harmless", "jailbreak"):
        assert shipped[kind] == [s.prompt for s in sp if s.kind == kind], kind
