"""A stage's code version: the hash of every project source file the stage can run, found by reading imports.

Starting from the files of the stage's package, follow every `import` and `from ... import` (also the
ones inside functions, which is how heavy modules such as torch code are loaded late) that lands in one
of the project's packages (`tasks`, `models`), and hash those files' bytes. A change anywhere in that
code changes the key; a change to a test, a benchmark, the flows or another stage's package does not.
Nothing is imported: planning a flow must not load torch.
"""
from __future__ import annotations

import ast
import hashlib
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repo: holds tasks/ and models/
PROJECT_PACKAGES = ("tasks", "models")
FORMAT_VERSION = "0.1.0"  # bump when an on-disk format changes in a way the sources would not show
# CPython 3.11's ast.parse is not safe in concurrent threads ("AST constructor recursion depth mismatch"),
# and the flow plans independent stages at the same time
_PARSE_LOCK = threading.Lock()


def module_file(name: str, root: Path = ROOT) -> Path | None:
    """The source file of a project module name (`tasks.dedup.minhash`), or None when it is not ours."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported_names(path: Path, root: Path) -> set[str]:
    """Module names `path` imports; `from a import b` yields both `a` and `a.b` (b may be a module)."""
    source = path.read_bytes()
    with _PARSE_LOCK:
        tree = ast.parse(source, filename=str(path))
    module = _module_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def _with_parents(name: str) -> list[str]:
    """Importing `a.b.c` runs `a/__init__`, `a/b/__init__` and `a/b/c`."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def source_files(package: str, root: Path = ROOT) -> tuple[Path, ...]:
    """Every project file a stage package can run: its own files plus their import closure."""
    start = root.joinpath(*package.split("."))
    todo = sorted(start.rglob("*.py")) if start.is_dir() else [module_file(package, root)]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        for name in _imported_names(path, root):
            for parent in _with_parents(name):
                found = module_file(parent, root)
                if found is not None and found not in seen:
                    todo.append(found)
    return tuple(sorted(seen))


def code_version(package: str, root: Path = ROOT) -> str:
    """Hash of the paths and bytes of `source_files(package)` (and the format version)."""
    h = hashlib.sha256(FORMAT_VERSION.encode())
    for path in source_files(package, root):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        h.update(path.read_bytes())
    return h.hexdigest()[:16]
