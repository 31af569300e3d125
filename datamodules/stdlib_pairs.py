"""A built-in question–passage dataset mined from the docstrings of Python's own standard library.

The summary line of a docstring is the query and the rest of the docstring, headed by the object's name, is the
passage, so the data ships with every Python and nothing is downloaded. Sources are parsed with ``ast`` (never
imported, so no module side effects).
"""

import ast
import logging
import os
import re
import sysconfig

import datasets

log = logging.getLogger(__name__)

SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "dist-packages", "__pycache__", "ensurepip",
             "turtledemo", "pydoc_data", "tkinter"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s")


def _pairs_from_source(path: str, module: str) -> list[dict]:
    """The file's (anchor, positive) pairs, each with its ``owner``: the class of a method, else None."""
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        text = " ".join(doc.split())
        parts = SENTENCE_END.split(text, maxsplit=1)
        if len(parts) < 2:
            continue
        query, rest = parts[0].strip(), parts[1].strip()
        if len(query.split()) >= 4 and len(rest.split()) >= 8:
            parent = parents.get(node)
            owner = f"{module}.{parent.name}" if isinstance(parent, ast.ClassDef) else None
            pairs.append({"anchor": query, "positive": f"{module}.{node.name}: {rest}", "owner": owner})
    return pairs


def _unique_rows() -> list[dict]:
    """Every pair of the standard library's docstrings with its ``owner``, duplicate queries or passages dropped."""
    root = sysconfig.get_paths()["stdlib"]
    rows = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if d not in SKIP_DIRS and not d.startswith("."))
        for name in sorted(files):
            if name.endswith(".py") and not name.startswith("test_"):
                rel = os.path.relpath(os.path.join(directory, name), root)
                rows += _pairs_from_source(os.path.join(directory, name), rel[:-3].replace(os.sep, ".").removesuffix(".__init__"))
    seen_q, seen_p, unique = set(), set(), []
    for row in rows:
        if row["anchor"] not in seen_q and row["positive"] not in seen_p:
            seen_q.add(row["anchor"])
            seen_p.add(row["positive"])
            unique.append(row)
    log.info("stdlib docstrings: %d pairs, %d dropped as duplicate queries or passages", len(unique), len(rows) - len(unique))
    return unique


def stdlib_docstring_pairs(max_rows: int | None = None, seed: int = 0) -> datasets.Dataset:
    """(anchor, positive) pairs from stdlib docstrings; duplicate queries or passages are dropped (count logged)."""
    unique = [{"anchor": row["anchor"], "positive": row["positive"]} for row in _unique_rows()]
    data = datasets.Dataset.from_list(unique).shuffle(seed=seed)
    return data.select(range(min(max_rows, len(data)))) if max_rows else data


def stdlib_function_pairs(seed: int = 0) -> datasets.Dataset:
    """The pairs of ``stdlib_docstring_pairs`` whose object is not a method (functions and classes): (anchor,
    positive)."""
    rows = [{"anchor": row["anchor"], "positive": row["positive"]} for row in _unique_rows() if row["owner"] is None]
    return datasets.Dataset.from_list(rows).shuffle(seed=seed)


def stdlib_method_triplets(seed: int = 0) -> datasets.Dataset:
    """The pairs of ``stdlib_docstring_pairs`` whose object is a method, each with a hard negative: the passage of
    the next documented method of the same class (classes with one such method are left out): (anchor, positive,
    negative). With ``stdlib_function_pairs`` they split the docstring pairs in two sources that share no row."""
    by_class: dict[str, list[dict]] = {}
    for row in _unique_rows():
        if row["owner"] is not None:
            by_class.setdefault(row["owner"], []).append(row)
    rows = [{"anchor": row["anchor"], "positive": row["positive"],
             "negative": methods[(i + 1) % len(methods)]["positive"]}
            for methods in by_class.values() if len(methods) > 1 for i, row in enumerate(methods)]
    return datasets.Dataset.from_list(rows).shuffle(seed=seed)
