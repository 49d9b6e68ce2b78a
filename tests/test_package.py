"""The package's shape: no import cycles (module graph from the AST, imports inside functions included), kernels/
importing nothing from kvi_engine, every `from kvi_engine... import name` resolving, and no top-level `kernels`."""
import ast
import importlib
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

import kvi_engine

ROOT = Path(kvi_engine.__file__).resolve().parent
REPO = ROOT.parent
KERNELS = REPO / "kernels"


def modules() -> dict[str, Path]:
    out = {}
    for base, prefix in ((ROOT, "kvi_engine"), (KERNELS, "kvi_engine.kernels")):
        for p in sorted(base.rglob("*.py")):
            rel = p.relative_to(base).with_suffix("")
            parts = [prefix, *rel.parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = p
    return out


MODULES = modules()
NATIVE = {"kvi_engine._core"}  # the compiled extension: a leaf module with no Python source


def _package(name: str) -> str:
    return name if MODULES[name].name == "__init__.py" else name.rsplit(".", 1)[0]


def imports(name: str):
    """``(target module, imported names or None, line)`` of every import statement in module ``name``, at any
    depth (function-level imports couple modules as much as top-level ones do; TYPE_CHECKING ones too)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                base = _package(name).split(".")
                base = base[:len(base) - node.level + 1]
                mod = ".".join(base + ([mod] if mod else []))
            yield mod, [a.name for a in node.names], node.lineno


def edges(name: str) -> set[str]:
    """Modules of kvi_engine that ``name`` imports: ``from pkg import sub`` names the submodule when it is one."""
    out = set()
    for mod, names, _ in imports(name):
        if not mod.startswith("kvi_engine"):
            continue
        subs = [f"{mod}.{n}" for n in names or () if f"{mod}.{n}" in MODULES or f"{mod}.{n}" in NATIVE]
        out.update(subs)
        if mod in MODULES and (names is None or len(subs) < len(names)):
            out.add(mod)
    out.discard(name)
    return out


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every back edge of a depth-first walk, as the cycle it closes (empty: the graph is acyclic)."""
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                cycles.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return cycles


def test_no_import_cycles():
    graph = {m: edges(m) for m in MODULES} | {m: set() for m in NATIVE}
    cycles = find_cycles(graph)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_can_fail():
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []  # a diamond is not a cycle
    # the edges it walks include imports inside functions (DeviceKVCache.gather imports the codec lazily)
    assert "kvi_engine.bank.quant" in edges("kvi_engine.bank.residency")


def test_kernels_import_nothing_from_kvi_engine():
    for name, path in MODULES.items():
        if not name.startswith("kvi_engine.kernels"):
            continue
        bad = [(mod, line) for mod, _, line in imports(name) if mod.startswith("kvi_engine")]
        assert not bad, f"{path}: kernels take plain tensors and import nothing above them: {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_internal_import_resolves(name):
    """A renamed or moved module breaks a function-level import only when that function runs: check them all."""
    for mod, names, line in imports(name):
        if not mod.startswith("kvi_engine") or mod == "kvi_engine._core":
            continue
        target = importlib.import_module(mod)
        for n in names or ():
            ok = n == "*" or hasattr(target, n) or (
                hasattr(target, "__path__") and importlib.util.find_spec(f"{mod}.{n}") is not None)
            assert ok, f"{MODULES[name]}:{line}: `from {mod} import {n}`: no such name or module"


def test_import_without_gpu_and_kernels_namespace(tmp_path):
    import kvi_engine.kernels as ours

    assert kvi_engine._core.__version__ == kvi_engine.__version__
    assert Path(ours.__file__).resolve().parent == KERNELS  # installed under kvi_engine. by the package_dir mapping
    # Hugging Face owns the top-level name `kernels` (transformers imports it when present): the installed package
    # must never provide it. Looked up from a directory outside the checkout (the checkout itself is on sys.path of
    # anything started in it) and in the installed file list.
    code = ("import importlib.metadata as m, importlib.util as u; s = u.find_spec('kernels');"
            "print(s.origin if s else ''); print([str(f) for f in m.files('kvi-engine') or [] if f.parts[0] == 'kernels'])")
    found, listed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                                   env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
                                   check=True).stdout.rstrip("\n").split("\n")
    assert not found or not Path(found).resolve().is_relative_to(KERNELS), f"top-level kernels resolves to {found}"
    assert listed == "[]", f"the installed files include a top-level kernels/: {listed}"
