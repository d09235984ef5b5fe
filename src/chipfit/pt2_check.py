"""Is a ``torch.export`` archive (.pt2) safe to load? Answered from its entries, before torch reads it.

``torch.export.load`` runs code from the file in several ways, each checked here (torch 2.13's loader):

- weights and tensor constants marked ``use_pickle`` in ``data/*/…_config.json`` are ``torch.load``-ed with
  ``weights_only=False``; ``opaque_obj_*`` constants are ``pickle.loads``-ed, ``custom_obj_*`` ones are
  TorchScript objects: all refused;
- the sample inputs (``data/sample_inputs/*.pt``) and legacy weight/constant files are loaded with
  ``weights_only=True`` and, when that fails, with ``weights_only=False``: each must load with
  ``weights_only=True`` (the caller's ``unpickles_safely``);
- AOTInductor entries (``data/aotinductor/``) are native libraries: refused;
- ``models/*.json``: symbolic-shape expressions (``expr_str``) go to ``sympy.sympify`` (``eval``) and
  ``guards_code`` is ``exec``-ed into a function when ``.module()`` is called, so both must be plain
  arithmetic over allowed names; every graph node's target must be an operator (``torch.ops.ns.op[.overload]``,
  ``_operator``/``math`` arithmetic, ``torch.sym_*``), never an arbitrary attribute of ``torch``.

torch is not imported here (the architecture keeps it to a few modules): callers pass the torch module in, and
the archive is read with torch's own reader, so that what is checked is what torch will load.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import json
import logging
import re
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from chipfit.errors import ModelError

__all__ = ["TRUST_HINT", "archive_reason", "load_checked", "quiet_torch", "unsafe_reason"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_OPS_TARGET = re.compile(r"^torch\.ops(\.[A-Za-z_][A-Za-z0-9_]*){2,3}$")
_OPERATOR_OK = frozenset(
    {"getitem", "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "neg", "pos", "abs", "eq", "ne", "lt"}
    | {"le", "gt", "ge", "and_", "or_", "xor", "not_", "invert", "lshift", "rshift", "truth", "index", "matmul"}
)
_SAFE_BUILTINS = frozenset({"abs", "min", "max", "int", "float", "bool", "round", "pow", "divmod", "len"})
_TENSOR_ATTRS = frozenset({"size", "stride", "storage_offset", "dim", "numel", "shape"})
_EXPR_NODES = (
    ast.Expression,
    ast.BoolOp,
    ast.BinOp,
    ast.UnaryOp,
    ast.Compare,
    ast.IfExp,
    ast.Call,
    ast.keyword,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Tuple,
    ast.operator,
    ast.unaryop,
    ast.cmpop,
    ast.boolop,
)


TRUST_HINT = (
    "Only if you trust whoever made the file, pass --trust-pickle (chipfit.fit/explore/load_model(..., "
    "trust_pickle=True)): loading it then runs code from the file."
)


def load_checked(torch: Any, reader_cls: Any, path: Path, trust_pickle: bool = False) -> tuple[Any, bytes]:
    """``torch.export.load`` of the file at ``path`` and the bytes it was loaded from (``torch`` is the torch
    module, ``reader_cls`` its ``PT2ArchiveReader`` or None when this torch has none): a ModelError when
    ``archive_reason`` finds a way for it to run code, unless ``trust_pickle``. The bytes checked are the bytes
    loaded; torch's own log lines and warnings during the load are silenced."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"Model file '{path}' cannot be read ({_short(exc)}).") from None
    fix = "Save it with torch.export.save(torch.export.export(model, args), path)."
    if not trust_pickle:
        try:
            reason = (
                archive_reason(blob, reader_cls, torch.load)
                if reader_cls is not None
                else "this torch's archive reader (PT2ArchiveReader) is not where chipfit checks archives with it"
            )
        except ValueError as exc:
            raise ModelError(f"Model file '{path}' is not a loadable ExportedProgram ({exc}). {fix}") from None
        if reason:
            raise ModelError(f"Model file '{path}' is refused: {reason}. {TRUST_HINT}")
    try:
        with quiet_torch():
            return torch.export.load(io.BytesIO(blob)), blob
    except Exception as exc:
        raise ModelError(f"Model file '{path}' is not a loadable ExportedProgram ({_short(exc)}). {fix}") from None


def archive_reason(blob: bytes, reader_cls: Any, torch_load: Callable[..., Any]) -> str | None:
    """Why loading the archive ``blob`` could run code from it (None when it cannot), read with torch's own
    archive reader ``reader_cls`` (so that the entries checked are the entries torch loads); ``torch_load`` is
    ``torch.load``, used with ``weights_only=True`` only. Raises ValueError when ``blob`` is no such archive."""

    def weights_only(data: bytes) -> bool:
        try:
            torch_load(io.BytesIO(data), weights_only=True, map_location="cpu")
        except Exception:  # anything the restricted unpickler refuses (or cannot read)
            return False
        return True

    try:
        with quiet_torch(), reader_cls(io.BytesIO(blob)) as reader:
            return unsafe_reason(list(reader.get_file_names()), reader.read_bytes, weights_only)
    except Exception as exc:  # not a zip, truncated, malformed JSON in an entry...
        raise ValueError(f"not a readable torch.export archive: {_short(exc)}") from None


@contextlib.contextmanager
def quiet_torch() -> Iterator[None]:
    """torch's loggers (which print tracebacks on a failed load) and warnings silenced for the block."""
    loggers = [logging.getLogger(n) for n in ("torch.export", "torch._export", "torch.serialization")]
    saved = [(lg, lg.propagate, lg.level) for lg in loggers]
    for lg in loggers:
        lg.propagate = False
        lg.setLevel(logging.CRITICAL + 1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, propagate, level in saved:
            lg.propagate = propagate
            lg.setLevel(level)


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:200]


def unsafe_reason(
    names: list[str], read: Callable[[str], bytes], unpickles_safely: Callable[[bytes], bool]
) -> str | None:
    """Why loading the archive with these entries (names without the archive's root folder) could run code
    from it, or None when it cannot."""
    if "archive_version" not in names:
        return "it is not a torch.export archive of this format (no 'archive_version' entry)"
    for name in names:
        if name.startswith("data/aotinductor/"):
            return f"it holds compiled native code ('{name}'), which loading it would run"
    for name in names:
        if name.startswith(("data/weights/", "data/constants/")) and name.endswith("config.json"):
            reason = _payload_reason(name, json.loads(read(name)))
            if reason:
                return reason
        elif name.startswith("data/") and name.endswith(".pt") and not unpickles_safely(read(name)):
            return f"its entry '{name}' is a pickle that needs more than tensors to load (it could run code)"
    for name in names:
        if name.startswith("models/") and name.endswith(".json"):
            reason = _program_reason(name, json.loads(read(name)))
            if reason:
                return reason
    return None


def _payload_reason(name: str, config: Any) -> str | None:
    entries = config.get("config") if isinstance(config, dict) else None
    if not isinstance(entries, dict):
        return None  # not a payload config torch reads
    for fqn, meta in entries.items():
        if not isinstance(meta, dict):
            return f"'{name}' has a malformed entry for '{fqn}'"
        path = str(meta.get("path_name", ""))
        if meta.get("use_pickle"):
            return f"'{fqn}' is stored as a pickle ('{name}' marks it use_pickle), which loading it would run"
        if path.startswith(("custom_obj_", "opaque_obj_")):
            return f"the constant '{fqn}' is a pickled object ('{path}'), which loading it would run"
    return None


def _program_reason(name: str, program: Any) -> str | None:
    if not isinstance(program, dict):
        return f"'{name}' is not a serialized program"
    guards = program.get("guards_code") or []
    if not isinstance(guards, list):
        return f"'{name}' has malformed guards_code"
    for guard in guards:
        bad = _expr_problem(guard, guard=True)
        if bad:
            return f"a shape guard in '{name}' is not plain arithmetic ({bad}): {str(guard)[:80]!r}"
    for key, value in _walk(program):
        if key == "expr_str":
            bad = _expr_problem(value, guard=False)
            if bad:
                return f"a symbolic shape in '{name}' is not plain arithmetic ({bad}): {str(value)[:80]!r}"
        elif key == "target" and not _target_ok(value):
            return f"a graph node in '{name}' calls '{str(value)[:80]}', which is not an operator"
    return None


def _walk(obj: Any) -> Iterator[tuple[str, Any]]:
    """(key, value) of every dict entry in ``obj``; ``target`` only where the dict is a graph node."""
    stack = [obj]
    while stack:
        cur = stack.pop()
        if isinstance(cur, dict):
            node = "inputs" in cur and "outputs" in cur
            for k, v in cur.items():
                if k != "target" or node:
                    yield k, v
                if isinstance(v, (dict, list)):
                    stack.append(v)
        elif isinstance(cur, list):
            stack.extend(x for x in cur if isinstance(x, (dict, list)))


def _target_ok(target: Any) -> bool:
    if not isinstance(target, str) or "__" in target:
        return False
    if _OPS_TARGET.match(target):
        return True
    head, _, rest = target.partition(".")
    if head == "_operator":
        return rest in _OPERATOR_OK
    if head == "math":
        return bool(re.fullmatch(r"[a-z][a-z0-9_]*", rest))
    return bool(re.fullmatch(r"torch\.sym_[a-z_]+", target))


def _expr_problem(text: Any, *, guard: bool) -> str | None:
    """What makes ``text`` more than an arithmetic expression over allowed names (None when nothing)."""
    if not isinstance(text, str) or len(text) > 20_000:
        return "not a short string"
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return "not an expression"
    for node in ast.walk(tree):
        problem = _node_problem(node, guard)
        if problem:
            return problem
    return None


def _node_problem(node: ast.AST, guard: bool) -> str | None:
    if isinstance(node, ast.Name):
        return _name_problem(node.id, guard)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, str):
            return None if _IDENT.match(node.value) else "a string that is not a name"
        return None if isinstance(node.value, (int, float, bool, type(None))) else "a non-numeric constant"
    if isinstance(node, ast.keyword):
        return None if node.arg is not None and not node.arg.startswith("_") else "**keywords"
    if guard and isinstance(node, ast.Attribute):
        on_math = isinstance(node.value, ast.Name) and node.value.id == "math"
        ok = node.attr in _TENSOR_ATTRS or (on_math and re.fullmatch(r"[a-z][a-z0-9_]*", node.attr))
        return None if ok else f"the attribute '{node.attr}'"
    if guard and isinstance(node, (ast.Subscript, ast.Slice)):
        return None
    if isinstance(node, _EXPR_NODES):
        return None
    return f"a {type(node).__name__}"


def _name_problem(name: str, guard: bool) -> str | None:
    if name.startswith("_"):
        return f"the name '{name}'"
    if hasattr(builtins, name):
        return None if guard and name in _SAFE_BUILTINS else f"the built-in '{name}'"
    if guard:
        return None  # anything else is a name of the guard's namespace (L, math, sympy helpers) or undefined
    import sympy  # torch's dependency: sympify resolves names in sympy's namespace

    obj = getattr(sympy, name, None)
    if obj is None or name not in getattr(sympy, "__all__", ()):
        return None  # torch's own functions (FloorDiv...) or a symbol name
    is_basic = isinstance(obj, sympy.Basic) or (isinstance(obj, type) and issubclass(obj, sympy.Basic))
    return None if is_basic else f"the sympy function '{name}'"
