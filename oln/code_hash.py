"""The import graph of the `oln` package, read with `ast` (nothing is imported), and stage code hashes.

A stage's code is its entry module (its command in `oln/commands/`) and every `oln` module
it imports, transitively, counting imports inside functions (the commands import their
library lazily) and the `__init__.py` of every package on the way (Python runs them).
`stage_code_hash` hashes those files' bytes plus the data files they read (the config
schema), so a rule re-runs, and a killed training drops its checkpoints, exactly when
code it runs changed.
"""

from __future__ import annotations

import ast
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

PACKAGE = "oln"
PACKAGE_DIR = Path(__file__).resolve().parent
#: Non-Python files a module reads, relative to the package folder: they count as its code.
MODULE_DATA = {"oln.config": ("config.schema.yaml",)}


def module_path(module: str, package_dir: Path = PACKAGE_DIR) -> Path | None:
    """The source file of `module` (`oln.a.b` -> `a/b.py` or `a/b/__init__.py`), None if there is none."""
    parts = module.split(".")[1:]
    base = package_dir.joinpath(*parts)
    candidates = [base.with_suffix(".py"), base / "__init__.py"] if parts else [base / "__init__.py"]
    return next((path for path in candidates if path.is_file()), None)


def all_modules(package_dir: Path = PACKAGE_DIR) -> list[str]:
    """Every module of the package (dotted names), sorted."""
    names = []
    for path in package_dir.rglob("*.py"):
        rel = path.relative_to(package_dir).with_suffix("").parts
        if "__pycache__" in rel:
            continue
        names.append(".".join((PACKAGE, *(rel[:-1] if rel[-1] == "__init__" else rel))))
    return sorted(names)


def _is_package(module: str, package_dir: Path) -> bool:
    path = module_path(module, package_dir)
    return path is not None and path.name == "__init__.py"


def _resolve(node: ast.ImportFrom, module: str, package_dir: Path) -> str | None:
    """The absolute module named by a `from ... import` (relative imports resolved)."""
    if node.level == 0:
        return node.module
    package = module if _is_package(module, package_dir) else module.rpartition(".")[0]
    base = package.split(".")
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _statements(tree: ast.Module, lazy: bool) -> Iterable[ast.AST]:
    """Import statements of a module: all of them, or (not `lazy`) those outside functions."""
    if lazy:
        yield from (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom))
        return
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            stack.extend(ast.iter_child_nodes(node))


def module_imports(module: str, package_dir: Path = PACKAGE_DIR, lazy: bool = True) -> set[str]:
    """The `oln` modules `module` imports by name (`from oln.a import b` gives `oln.a` and, when
    `b` is a module, `oln.a.b`); with `lazy`, imports inside functions count too."""
    path = module_path(module, package_dir)
    if path is None:
        raise ValueError(f"{module}: no such module under {package_dir}")
    tree = ast.parse(path.read_bytes(), filename=str(path))
    found: set[str] = set()
    for node in _statements(tree, lazy):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            base = _resolve(node, module, package_dir)
            if base is None:
                continue
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        found.update(name for name in names if _in_package(name) and module_path(name, package_dir))
    found.discard(module)
    return found


def _in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


def import_graph(package_dir: Path = PACKAGE_DIR, lazy: bool = False) -> dict[str, set[str]]:
    """Module -> the `oln` modules it imports (module level only unless `lazy`)."""
    return {name: module_imports(name, package_dir, lazy) for name in all_modules(package_dir)}


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imported_modules(entry_modules: Iterable[str], package_dir: Path = PACKAGE_DIR) -> set[str]:
    """`entry_modules` and every `oln` module they import, transitively (lazy imports and
    the packages' `__init__` included: what Python may run for them)."""
    done: set[str] = set()
    todo = list(entry_modules)
    while todo:
        module = todo.pop()
        if module in done:
            continue
        done.add(module)
        todo.extend(_parents(module))
        todo.extend(module_imports(module, package_dir, lazy=True))
    return done


def stage_code_hash(entry_modules: Iterable[str], package_dir: str | os.PathLike = PACKAGE_DIR) -> str:
    """16 hex digits of SHA-256 over the files of `imported_modules(entry_modules)` and their data files.

    Args:
        entry_modules: dotted names, e.g. `["oln.commands.train_pa"]`.
        package_dir: the `oln` folder to read (default: this package; the workflow passes its own checkout).
    """
    package_dir = Path(package_dir)
    files: set[Path] = set()
    for module in imported_modules(entry_modules, package_dir):
        files.add(module_path(module, package_dir))
        files.update(package_dir / name for name in MODULE_DATA.get(module, ()))
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
