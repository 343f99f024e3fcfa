"""The package's shape: parts in layers, commands on top, no import circles, no giant functions.

Read from the source (every import statement, lazy ones inside functions included), so a change that
breaks the layering fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rwkv1c"

# The layer of each part; a module may import its own part and lower layers only. Parts on the same layer
# are independent of each other (training and inference; 1C tools and machine set-up).
LAYERS = {
    "core": 0,  # errors, hints, fsutil, text, config, the package itself
    "model": 1,
    "data": 2,
    "train": 3,
    "infer": 3,
    "onec": 4,
    "machine": 4,
    "commands": 5,
    "cli": 6,  # cli.py and __main__.py
}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def part_of(module: str) -> str:
    pieces = module.split(".")
    if len(pieces) == 1:
        return "core"
    if pieces[1] in ("cli", "__main__"):
        return "cli"
    return pieces[1] if pieces[1] in LAYERS else "core"


def imports_of(path: Path) -> set[str]:
    """Every rwkv1c module `path` imports (module level and inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    own = module_name(path)
    package = own if path.name == "__init__.py" else own.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "rwkv1c"}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            if base.split(".")[0] != "rwkv1c":
                continue
            for alias in node.names:  # `from rwkv1c.train import distributed` imports a module
                sub = f"{base}.{alias.name}"
                found.add(sub if (SRC.parent / sub.replace(".", "/")).with_suffix(".py").exists() else base)
    found.discard(own)
    return found


MODULES = {module_name(p): p for p in sorted(SRC.rglob("*.py"))}
GRAPH = {name: imports_of(path) for name, path in MODULES.items()}


def test_every_import_goes_down_the_layers() -> None:
    bad = []
    for mod, deps in GRAPH.items():
        src_part = part_of(mod)
        for dep in deps:
            dep_part = part_of(dep)
            if dep == "rwkv1c" or dep_part == src_part:
                continue
            if LAYERS[dep_part] >= LAYERS[src_part]:
                bad.append(f"{mod} ({src_part}) imports {dep} ({dep_part})")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_commands_never_import_commands() -> None:
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in GRAPH.items()
        if part_of(mod) == "commands"
        for dep in deps
        if part_of(dep) == "commands" and dep != "rwkv1c.commands"
    ]
    assert not bad, "\n".join(bad)


def test_each_command_lives_in_its_own_module() -> None:
    from rwkv1c.cli import COMMANDS

    for verb, target in COMMANDS.items():
        module, _, func = target.partition(":")
        assert module.startswith("rwkv1c.commands."), verb
        assert module in MODULES, f"{verb}: {module} does not exist"
        assert f"def {func}(" in MODULES[module].read_text(encoding="utf-8"), f"{verb}: no {func} in {module}"
    assert len({t.partition(":")[0] for t in COMMANDS.values()}) == len(COMMANDS)


def test_no_import_circles() -> None:
    """Tarjan's strongly connected components over the module graph: every component is one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH.get(v, ()):
            if w not in GRAPH:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for v in GRAPH:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def _code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function without its docstring."""
    assert fn.end_lineno is not None
    total = fn.end_lineno - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        assert first.end_lineno is not None
        total -= first.end_lineno - first.lineno + 1
    return total


@pytest.mark.parametrize("limit", [100])
def test_no_function_over_two_screens(limit: int) -> None:
    long = []
    for name, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _code_lines(node) > limit:
                long.append(f"{name}.{node.name}: {_code_lines(node)} lines")
    assert not long, "\n".join(long)


def test_the_layering_check_sees_lazy_imports(tmp_path: Path) -> None:
    """The checker reads imports inside functions too (the way heavy modules are imported here)."""
    fake = SRC / "model" / "_probe_for_test.py"
    fake.write_text("def f():\n    from rwkv1c.infer.engine import Engine\n    return Engine\n", encoding="utf-8")
    try:
        assert "rwkv1c.infer.engine" in imports_of(fake)
        assert LAYERS[part_of("rwkv1c.infer.engine")] > LAYERS[part_of(module_name(fake))]
    finally:
        fake.unlink()


def test_importing_the_package_and_the_cli_imports_no_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, rwkv1c, rwkv1c.cli, rwkv1c.config, rwkv1c.model.config, rwkv1c.machine.memory;"
        "rwkv1c.cli.build_parser(); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
