"""The shape of the house: which wing may import which, no circles, no module past one sitting.

Reads the sources only (nothing is imported), so a forbidden import fails here even when it sits in a
function that no other test calls. The table is the one in docs/DESIGN.md, "Layout: the wings".
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "tunerd"
KERNELS = ROOT / "kernels"
MAX_LINES = 500

GROUND = "ground"      # tunerd/errors.py, files.py, version.py, pipeconfig.py (and the package face)
FACE = "face"          # tunerd/__init__.py: hands on names, may reach any wing lazily
ALLOWED = {
    GROUND: {GROUND},
    "kernels": set(),
    "model": {GROUND, "kernels"},
    "platform": {GROUND},
    "costs": {GROUND, "model", "platform", "backends"},
    "tuning": {GROUND, "platform", "costs"},
    "backends": {GROUND, "model"},
    "pipeline": {GROUND, "model", "platform", "backends"},
    "wire": {GROUND},
    "daemon": {GROUND, "model", "platform", "costs", "tuning", "backends", "pipeline", "wire"},
    "commands": {GROUND, "model", "platform", "costs", "tuning", "backends", "pipeline", "wire", "daemon",
                 "commands"},
    FACE: {GROUND, "model", "backends", "wire"},
}
WINGS = set(ALLOWED) - {GROUND, FACE}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for the package and the kernels (installed as tunerd.kernels)."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    for path in sorted(KERNELS.rglob("*.py")):
        parts = ["tunerd", "kernels", *path.relative_to(KERNELS).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def wing_of(module: str) -> str:
    parts = module.split(".")
    if parts == ["tunerd"]:
        return FACE
    if len(parts) >= 2 and parts[1] in WINGS:
        return parts[1]
    return GROUND


def _is_package(module: str) -> bool:
    return MODULES[module].name == "__init__.py"


def imports_of(module: str) -> set[str]:
    """The tunerd modules that `module` imports, anywhere in its body (lazy imports count)."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    package = module if _is_package(module) else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "tunerd"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "tunerd":
                continue
            # `from pkg import name`: name is a module when the package has one of that name
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            found |= set(subs) if subs and len(subs) == len(node.names) else {target, *subs}
    return {m for m in found if m != module}


def test_every_import_names_a_real_module():
    missing = {(m, i) for m in MODULES for i in imports_of(m) if i not in MODULES}
    assert not missing, sorted(missing)


def test_wings_import_only_what_their_docstrings_allow():
    bad = []
    for module in MODULES:
        src = wing_of(module)
        for target in imports_of(module):
            dst = wing_of(target)
            if dst != src and dst not in ALLOWED[src]:
                bad.append(f"{module} ({src}) imports {target} ({dst})")
    assert not bad, "\n".join(bad)


def test_no_circle_between_wings():
    edges = {w: set() for w in ALLOWED}
    for module in MODULES:
        for target in imports_of(module):
            a, b = wing_of(module), wing_of(target)
            if a != b and FACE not in (a, b):
                edges[a].add(b)
    seen, on_path = set(), []

    def visit(w):
        if w in on_path:
            pytest.fail("circle between wings: " + " -> ".join(on_path[on_path.index(w):] + [w]))
        if w in seen:
            return
        on_path.append(w)
        for nxt in sorted(edges[w]):
            visit(nxt)
        on_path.pop()
        seen.add(w)

    for w in sorted(edges):
        visit(w)


def test_no_circle_between_modules_at_import_time():
    """Module-level imports only: a lazy import inside a function cannot deadlock a start-up."""
    graph = {}
    for module in MODULES:
        tree = ast.parse(MODULES[module].read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = set()
        package = module if _is_package(module) else module.rpartition(".")[0]
        for node in top:
            if isinstance(node, ast.ImportFrom) and node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                subs = {f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES}
                names |= subs or {target}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tunerd"):
                names.add(node.module)
        graph[module] = {n for n in names if n in MODULES and n != module and not n.startswith(module + ".")}
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_the_kernels_import_nothing_of_tunerd():
    for module in MODULES:
        if wing_of(module) == "kernels":
            assert not {i for i in imports_of(module) if wing_of(i) != "kernels"}, module


def test_every_wing_says_what_it_owns_and_may_import():
    for wing in WINGS - {"kernels"}:
        init = PACKAGE / wing / "__init__.py"
        if not init.exists():
            continue    # a wing planned in the table but not built yet
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc and len(doc) > 80, f"{init}: say what the wing owns and may import"


def test_no_module_past_one_sitting():
    long = {str(p.relative_to(ROOT)): n for p in MODULES.values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_guard_sees_a_forbidden_import(tmp_path):
    """The checker itself: a tuning module importing the pipeline is caught."""
    fake = "tunerd.tuning._probe"
    MODULES[fake] = tmp_path / "probe.py"
    MODULES[fake].write_text("from ..pipeline import executor\nfrom .. import errors\n")
    try:
        got = imports_of(fake)
        assert got == {"tunerd.pipeline.executor", "tunerd.errors"}
        assert wing_of("tunerd.pipeline.executor") not in ALLOWED[wing_of(fake)]
    finally:
        del MODULES[fake]
