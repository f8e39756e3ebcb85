"""The embedded demo corpus: the documentation that ships with the running Python, with no download.

Real English prose for an offline demo: `pydoc_data.topics` (the language reference pages that `help()` shows)
plus every module, class and function docstring of the standard library, read from source with `ast` so that
no module is imported (no side effects, and ~4x more text than importing: on CPython 3.11 about 0.46 MB of
topics and 1.8 MB of docstrings from 734 files: 8,333 documents, 2.23 M characters after deduplication, in
~4.5 s on one core).
`with_site_packages=True` adds the docstrings of installed packages (torch, numpy, transformers... tens of MB).

Documents: one per help topic, and one per docstring (code examples and all). Identical docstrings are yielded
once. Files are visited in sorted order, so the stream is deterministic for a given environment.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _source_files(root: Path) -> list[Path]:
    """Python sources under root, sorted, without test suites (nor site-packages when root is the stdlib)."""
    if not root.is_dir():
        return []
    skip = SKIP_DIRS - {root.name}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts[:-1]))


def _docstrings(path: Path) -> Iterator[str]:
    """Docstrings of a module and of all its classes and functions, in source order."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escape sequences in old sources
            tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES) and (doc := ast.get_docstring(node, clean=True)):
            yield doc


def _topics() -> Iterator[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # some distributions strip pydoc_data
        return
    for name in sorted(topics):
        yield inspect.cleandoc(topics[name])


def _roots(with_site_packages: bool) -> list[Path]:
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"])]
    if with_site_packages:
        roots += sorted({Path(paths["purelib"]), Path(paths["platlib"])})
    return roots


def iter_python_docs(with_site_packages: bool = False) -> Iterator[str]:
    """Yield the help topics then the docstrings of every stdlib (and optionally site-packages) source file."""
    seen: set[bytes] = set()

    def fresh(text: str) -> bool:
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        if key in seen:
            return False
        seen.add(key)
        return True

    for text in _topics():
        if text.strip() and fresh(text):
            yield text
    for root in _roots(with_site_packages):
        for path in _source_files(root):
            for doc in _docstrings(path):
                if fresh(doc):
                    yield doc


def describe() -> str:
    """One line: how much text this environment gives (for logs and docs)."""
    n = chars = 0
    for doc in iter_python_docs():
        n += 1
        chars += len(doc)
    return f"python-docs: {n} documents, {chars / 1e6:.2f} M characters"
