"""The package's import graph goes one way (issue 10): no cycles, no upward arrows.

Every ``import`` of an ``s3proxy`` module counts, function-local ones included
(they hide cycles, they do not remove them).  Layers, top to bottom:

    cli -> server -> app -> http -> state -> backend -> config -> keys, crypto -> aws, observability, tlsutil, progress

(``rewrap``, ``migrate``, ``export``, ``recover``, ``doctor``, ``bulkjob``, ``bulkio`` are tools beside
``server``: they may use http, backend, keys and crypto; nothing below imports
them.)  The embedded store (``devstore``) is a separate program: only ``cli``
(for ``s3proxy dev``) may import it, and it imports nothing of the proxy but
the protocol layer.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2] / "s3proxy"

RANK: dict[str, float] = {
    "__main__": 10, "cli": 8,
    "server": 7, "rewrap": 7, "migrate": 7, "export": 7, "recover": 7, "doctor": 7, "bulkjob": 7, "bulkio": 7,
    "app": 6, "state": 3.5,  # the running proxy's shared state: used by http, uses backend/keys
    "http": 4,
    "backend": 3,
    "config": 2.5,  # the settings models, including each key backend's (keys.settings)
    "keys": 2, "crypto": 2,
    "aws": 1, "observability": 1, "tlsutil": 1, "progress": 1,
    "devstore": 9,  # a separate program; imported only by cli (see below)
}
# Within a layer, crypto may use keys' plain types (WrappedKey, errors), never the reverse.
SAME_LAYER_ALLOWED = {("crypto", "keys"), ("doctor", "server"), ("migrate", "server"), ("export", "server"),
                      ("export", "migrate"), ("recover", "server"),
                      ("migrate", "bulkjob"), ("export", "bulkjob"), ("recover", "bulkjob"), ("bulkjob", "server"),
                      ("migrate", "rewrap"), ("bulkjob", "rewrap"),
                      ("bulkio", "server"), ("bulkio", "rewrap"), ("bulkjob", "bulkio"), ("migrate", "bulkio"),
                      ("export", "bulkio")}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str) -> set[str]:
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("s3proxy")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("s3proxy"):
                # "from s3proxy.http import objects" imports the submodule
                for a in node.names:
                    sub = f"{mod}.{a.name}"
                    out.add(sub if (ROOT.parent / (sub.replace(".", "/") + ".py")).exists() else mod)
    out.discard(name)
    return out


def graph() -> dict[str, set[str]]:
    g: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        name = _module_name(path)
        g[name] = {m for m in _imports(path, name) if m != "s3proxy"}
    return g


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in g:
                continue
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

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def upward_arrows(g: dict[str, set[str]]) -> set[tuple[str, str]]:
    bad = set()
    for src, targets in g.items():
        ls = _layer(src)
        for dst in targets:
            ld = _layer(dst)
            if ls == ld or ld == "":
                continue
            if ld == "devstore" and ls != "cli":
                bad.add((src, dst))
                continue
            if ls == "devstore" and ld not in ("aws", "config", "observability", "tlsutil"):
                bad.add((src, dst))
                continue
            if ld == "devstore" or ls == "devstore":
                continue
            if RANK.get(ld, 0) > RANK.get(ls, 0) or (
                RANK.get(ld, 0) == RANK.get(ls, 0) and (ls, ld) not in SAME_LAYER_ALLOWED
            ):
                bad.add((src, dst))
    return bad


# Arrows that exist today and are to be removed (issue 10); the list may only shrink.
KNOWN_UPWARD: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[list[str]] = []


def test_no_import_cycles() -> None:
    cycles = _cycles(graph())
    new = [c for c in cycles if c not in KNOWN_CYCLES]
    assert not new, f"import cycles: {new}"


def test_no_upward_arrows() -> None:
    bad = upward_arrows(graph())
    assert bad <= KNOWN_UPWARD, f"imports that point up the layers: {sorted(bad - KNOWN_UPWARD)}"


def test_every_layer_is_known() -> None:
    unknown = {_layer(m) for m in graph()} - set(RANK) - {""}
    assert not unknown, f"modules outside the layer map: {unknown}"


@pytest.mark.parametrize("package", sorted(p.parent.name for p in ROOT.glob("*/__init__.py")))
def test_packages_say_what_they_are(package: str) -> None:
    doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text()))
    assert doc and "import" in doc.lower(), f"s3proxy/{package}/__init__.py: a docstring that says what it may import"
