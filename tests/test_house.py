"""The house's rules, checked from the code's own imports (docs/architecture.md):

- the layers written in pyproject's [tool.importlinter] hold (import-linter: a back edge fails with both names);
- no two modules of studio/ import each other, directly or round a loop (imports inside functions count too);
- a `_private` module is imported only from its own package, and no module imports another's `_private` name.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIO = ROOT / "studio"


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in sorted(STUDIO.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, str, int]]:
    """(module imported, name taken from it or "", line) for every import of studio in the file."""
    module = _module(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(a.name, "", node.lineno) for a in node.names if a.name.split(".")[0] == "studio"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "studio":
                continue
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.append((sub, "", node.lineno) if sub in MODULES else (target, a.name, node.lineno))
    return found


def _edges() -> dict[str, set[str]]:
    """module -> the modules of studio it imports (a name taken from a package counts as the package)."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for m, path in MODULES.items():
        for target, _name, _line in _imports(path):
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target in MODULES and target != m:
                edges[m].add(target)
    return edges


def test_layers_hold():
    """lint-imports with the contracts in pyproject.toml (the layers of docs/architecture.md)."""
    exe = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(exe), "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in run.stdout, run.stdout[-2000:]


def test_no_import_circle():
    """No module reaches itself through the imports of studio/ (a package's __init__ counts as its module:
    `from studio.x import name` ties to studio.x)."""
    edges = _edges()
    # a package's __init__ that re-exports its own submodules is not a circle with them
    for m in edges:
        edges[m] = {t for t in edges[m] if not m.startswith(t + ".")}
    circles, state = [], {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = "open"
        for t in sorted(edges[m]):
            if state.get(t) == "open":
                circles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t, stack + [t])
        state[m] = "done"

    for m in sorted(edges):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles: " + "; ".join(" -> ".join(c) for c in circles)
    assert len(edges) > 50 and sum(map(len, edges.values())) > 200  # the walk saw the whole house


def test_private_names_stay_home():
    """`pkg._mod` is imported only from inside `pkg`; `_name` is never imported from another module."""
    bad = []
    for m, path in MODULES.items():
        for target, name, line in _imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            private_parts = [
                i for i, part in enumerate(target.split(".")) if part.startswith("_") and part != "__init__"
            ]
            if private_parts:
                owner = ".".join(target.split(".")[: private_parts[0]])
                if not (m == owner or m.startswith(owner + ".")):
                    bad.append(f"{where} imports {target} (private to {owner})")
            if name.startswith("_") and not name.startswith("__"):
                bad.append(f"{where} takes {name} from {target}")
    assert not bad, "\n".join(bad)
    assert any(t.startswith("studio.export._") for p in MODULES.values() for t, _n, _l in _imports(p))
