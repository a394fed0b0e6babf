"""Which source files a stage runs: the l2lab modules its entry point imports, directly or not."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

PACKAGE = "l2lab"
SRC_ROOT = Path(__file__).resolve().parents[1]  # the folder holding the l2lab package (src/)


def module_file(module: str, src_root: Path = SRC_ROOT) -> Path | None:
    """src/l2lab/x.py or src/l2lab/x/__init__.py for "l2lab.x"; None when neither exists."""
    base = src_root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported(tree: ast.AST) -> set[str]:
    """Every l2lab module named by an import anywhere in the tree (function-level imports too)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == PACKAGE:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)  # "from l2lab import tracking"
    return names


def _with_parents(module: str) -> list[str]:
    """"l2lab.stages.train" -> ["l2lab", "l2lab.stages", "l2lab.stages.train"]: importing runs each __init__."""
    parts = module.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def import_closure(module: str, src_root: Path = SRC_ROOT) -> set[Path]:
    """The files of every l2lab module that importing `module` can run, package __init__ files included."""
    files: set[Path] = set()
    todo = [module]
    while todo:
        for name in _with_parents(todo.pop()):
            path = module_file(name, src_root)
            if path is None or path in files:
                continue  # "from l2lab.x import function": the function is no module
            files.add(path)
            todo.extend(_imported(ast.parse(path.read_text(), str(path))))
    return files


def code_digest(module: str, src_root: Path = SRC_ROOT) -> str:
    """sha256 over the closure's files (relative names and contents): which code produced a result."""
    digest = hashlib.sha256()
    for path in sorted(import_closure(module, src_root)):
        digest.update(path.relative_to(src_root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()
