"""Modules stay small and functions short (issue 10): a ratchet, like test_import_graph's KNOWN_CYCLES.

Every module under ``s3proxy/`` has at most ``MAX_MODULE_LINES`` lines and every function (method,
nested function) at most ``MAX_FUNCTION_LINES`` lines, from its ``def`` to its last line.  The
offenders of today are listed below with their size when they were listed: they may shrink, never
grow, and a module or function not listed may not become one.  When an offender is brought under
the limit its entry must go (``test_allowlists_are_current``), so the lists only ever get shorter.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2] / "s3proxy"

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80

# Module (path under s3proxy/) -> the most lines it may have.
KNOWN_LONG_MODULES: dict[str, int] = {
}

# "module:qualified.name" -> the most lines the function may have.
KNOWN_LONG_FUNCTIONS: dict[str, int] = {
}


def _modules() -> Iterator[tuple[str, str]]:
    for path in sorted(ROOT.rglob("*.py")):
        yield path.relative_to(ROOT).as_posix(), path.read_text(encoding="utf-8")


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, int]]:
    """(qualified name, lines) of every function in ``tree``, nested ones included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            name = prefix + node.name
            assert node.end_lineno is not None
            yield name, node.end_lineno - node.lineno + 1
            yield from _functions(node, name + ".")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, prefix + node.name + ".")
        else:
            yield from _functions(node, prefix)


def module_sizes() -> dict[str, int]:
    return {name: len(text.splitlines()) for name, text in _modules()}


def function_sizes() -> dict[str, int]:
    out: dict[str, int] = {}
    for name, text in _modules():
        for qualname, lines in _functions(ast.parse(text)):
            key = f"{name}:{qualname}"
            out[key] = max(lines, out.get(key, 0))  # same name twice (e.g. a property's setter): the longer
    return out


def _over(sizes: dict[str, int], limit: int, known: dict[str, int]) -> list[str]:
    bad = []
    for name, lines in sorted(sizes.items()):
        allowed = known.get(name, limit)
        if lines > allowed:
            why = f"listed at {allowed}, may only shrink" if name in known else f"limit {limit}"
            bad.append(f"{name}: {lines} lines ({why})")
    return bad


def test_modules_are_short() -> None:
    bad = _over(module_sizes(), MAX_MODULE_LINES, KNOWN_LONG_MODULES)
    assert not bad, "modules too long (split them by concern):\n" + "\n".join(bad)


def test_functions_are_short() -> None:
    bad = _over(function_sizes(), MAX_FUNCTION_LINES, KNOWN_LONG_FUNCTIONS)
    assert not bad, "functions too long (extract steps):\n" + "\n".join(bad)


def test_allowlists_are_current() -> None:
    modules, functions = module_sizes(), function_sizes()
    stale = [f"{m} ({modules.get(m, 'gone')} lines)" for m in KNOWN_LONG_MODULES
             if modules.get(m, 0) <= MAX_MODULE_LINES]
    stale += [f"{f} ({functions.get(f, 'gone')} lines)" for f in KNOWN_LONG_FUNCTIONS
              if functions.get(f, 0) <= MAX_FUNCTION_LINES]
    assert not stale, "no longer over the limit: remove from the allowlist so it cannot grow back:\n" + "\n".join(stale)


def test_the_measure_itself() -> None:
    tree = ast.parse(
        "def f():\n    def g():\n        pass\n    return g\n\n"
        "class C:\n    async def m(self):\n        x = 1\n        return x\n"
    )
    assert dict(_functions(tree)) == {"f": 4, "f.g": 2, "C.m": 3}
