"""The layout rules of DESIGN.md, checked on the source tree: each runtime library is imported only by its own
backend module (and the few places named below), no module imports another module's private helpers, and the
import graph has no cycles, between modules or between top-level packages."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "chipfit"

# library -> the modules (path prefixes under src/chipfit) allowed to import it, and why
ALLOWED: dict[str, tuple[str, ...]] = {
    "tvm": ("backends/tvm.py", "backends/_tvm_"),
    "openvino": ("backends/openvino.py",),
    # the runtime in its backend; ONNX Runtime's quantization and transformer optimizer are what the passes run
    "onnxruntime": ("backends/onnxruntime.py", "passes/"),
    # torch is also the training framework (explore, remat), the exporter (model ingest) and the test models
    "torch": ("backends/torch.py", "torch_export.py", "explore/", "remat/", "testing/"),
    # OpenVINO's int8 quantizer is a pass (it writes a QDQ ONNX model that any backend runs)
    "nncf": ("passes/nncf_int8.py",),
    # the Hugging Face model definitions build the BERT-family test graphs (random weights, no download)
    "transformers": ("testing/",),
    # the MILP/LP solver of the rematerialization planner
    "highspy": ("remat/solver.py",),
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(SRC).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _in_type_checking(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def _imports(module: str, path: Path) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every runtime import in ``path``, lazy ones included."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if _in_type_checking(node, parents):
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base, [a.name for a in node.names], node.lineno


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        for target, names, _ in _imports(mod, path):
            if not target.startswith("chipfit"):
                continue
            # `from chipfit.pkg import sub` imports the submodule when one exists
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in mods]
            for dep in subs or [target]:
                while dep not in mods and "." in dep:
                    dep = dep.rpartition(".")[0]
                if dep != mod and dep in mods:
                    graph[mod].add(dep)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def _top(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_runtime_libraries_are_imported_only_by_their_backend_modules() -> None:
    wrong = []
    for mod, path in _modules().items():
        rel = path.relative_to(PKG).as_posix()
        for target, _, line in _imports(mod, path):
            lib = target.split(".")[0]
            if lib in ALLOWED and not rel.startswith(ALLOWED[lib]):
                wrong.append(f"{rel}:{line} imports {target}")
    assert not wrong, "runtime libraries imported outside their modules:\n" + "\n".join(wrong)


def _foreign_private_module(target: str, package: str) -> bool:
    """Whether ``target`` has a private segment (``_x``) and ``package`` is not the package that owns it (a
    private module is for its siblings only)."""
    parts = target.split(".")
    return any(
        part.startswith("_") and not part.startswith("__") and package != ".".join(parts[:i])
        for i, part in enumerate(parts)
    )


@pytest.mark.parametrize(
    ("target", "package", "foreign"),
    [
        ("chipfit.passes._graph", "chipfit.passes", False),  # a sibling
        ("chipfit.passes._graph", "chipfit.measure", True),
        ("chipfit._private", "chipfit", False),
        ("chipfit._private", "chipfit.explore", True),  # a subpackage is not a sibling
        ("chipfit.backends._tvm_tune", "chipfit.search", True),
        ("chipfit.backends.tvm", "chipfit.search", False),
    ],
)
def test_private_modules_are_their_packages_business(target: str, package: str, foreign: bool) -> None:
    assert _foreign_private_module(target, package) is foreign


def test_no_module_imports_another_modules_private_names() -> None:
    mods = _modules()
    wrong = []
    for mod, path in mods.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for target, names, line in _imports(mod, path):
            if not target.startswith("chipfit") or target == mod:
                continue
            if _foreign_private_module(target, package):
                wrong.append(f"{path.relative_to(PKG)}:{line} imports the private module {target}")
            for n in names:
                private = n.startswith("_") and not n.startswith("__")
                # a package's private submodule is its own siblings' business
                sibling = f"{target}.{n}" in mods and target == package
                if private and not sibling:
                    wrong.append(f"{path.relative_to(PKG)}:{line} imports {target}.{n}")
    assert not wrong, "private names imported from other modules (make them public):\n" + "\n".join(wrong)


def test_the_module_graph_has_no_import_cycles() -> None:
    cycles = _cycles(_graph())
    assert not cycles, "import cycles between modules:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_the_package_graph_has_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {}
    for mod, deps in _graph().items():
        graph.setdefault(_top(mod), set()).update(_top(d) for d in deps if _top(d) != _top(mod))
    graph.pop("chipfit", None)  # the package's own __init__ only re-exports (lazily)
    for deps in graph.values():
        deps.discard("chipfit")
    cycles = _cycles(graph)
    assert not cycles, "import cycles between packages:\n" + "\n".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ({"a": {"b"}, "b": {"a"}, "c": {"a"}}, [["a", "b"]]),
        ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
    ],
)
def test_the_cycle_finder_finds_cycles(source: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert _cycles(source) == expected
