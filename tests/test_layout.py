"""The layout: the library (problayers: coercion, layers, regularizers, losses, KL, export) never
imports the application (problayers.train, problayers.vae, problayers.cli, problayers.demos), the
trainer never imports the VAE toolkit, and no module imports itself back through another."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "problayers"
APPLICATION = ("train", "vae", "cli", "demos", "__main__")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every problayers module ``path`` imports (at any depth of the file, lazily or not)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("problayers"):
                found.add(target)
                found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("problayers"))
    return found


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in APPLICATION else "library"


def _known(module: str) -> bool:
    path = PACKAGE.parent / module.replace(".", "/")
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


GRAPH = {
    _module_name(p): {m for m in _imports(p) if _known(m)} - {_module_name(p)} for p in PACKAGE.rglob("*.py")
}


def test_the_library_never_imports_the_application():
    offenders = {
        (src, dst)
        for src, targets in GRAPH.items()
        for dst in targets
        if _part(src) == "library" and src != "problayers" and _part(dst) != "library"
    }
    assert not offenders
    # problayers/__init__.py: pl.fit is the one lazy name (a module __getattr__), no import at load.
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert all(not (getattr(n, "module", "") or "").startswith(("train", "vae", "cli")) for n in top_level)


def test_the_trainer_never_imports_the_vae_toolkit_or_the_cli():
    offenders = {
        (s, d) for s, ds in GRAPH.items() for d in ds if _part(s) == "train" and _part(d) in ("vae", "cli")
    }
    assert not offenders
    offenders = {(s, d) for s, ds in GRAPH.items() for d in ds if _part(s) == "vae" and _part(d) == "cli"}
    assert not offenders


def test_no_import_circles():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in GRAPH.get(start, ()):
            if nxt == goal or (nxt not in seen and (seen.add(nxt) or reaches(nxt, goal, seen))):
                return True
        return False

    # a package's __init__ importing its own submodules is not a circle
    circles = [m for m in GRAPH if reaches(m, m, set()) and not all(d.startswith(m + ".") for d in GRAPH[m])]
    assert not circles


def test_importing_problayers_loads_the_library_only():
    code = (
        "import sys, torch; before = set(sys.modules); import problayers; "
        "new = set(sys.modules) - before; "
        "print(sorted(m for m in new if m.split('.')[0] in ('tqdm', 'matplotlib', 'PIL') "
        "or m.startswith(('problayers.train', 'problayers.vae', 'problayers.cli', 'problayers.demos', "
        "'torch._dynamo'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    out = subprocess.run(
        [sys.executable, "-c", "import problayers; print(problayers.fit.__module__)"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == "problayers.train.trainer"  # the README's pl.fit, loaded on first use
