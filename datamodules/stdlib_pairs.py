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
    try:
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return []
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
            pairs.append({"anchor": query, "positive": f"{module}.{node.name}: {rest}"})
    return pairs


def stdlib_docstring_pairs(max_rows: int | None = None, seed: int = 0) -> datasets.Dataset:
    """(anchor, positive) pairs from stdlib docstrings; duplicate queries or passages are dropped (count logged)."""
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
    data = datasets.Dataset.from_list(unique).shuffle(seed=seed)
    return data.select(range(min(max_rows, len(data)))) if max_rows else data
