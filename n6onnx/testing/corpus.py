"""A small, deterministic English corpus for calibration and fidelity checks, made from the
docstrings of Python standard-library modules (no downloads)."""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import re
import subprocess
import sys

_MODULES = (
    "abc argparse array ast asyncio base64 bisect calendar cmd codecs collections colorsys "
    "concurrent.futures configparser contextlib copy csv dataclasses datetime decimal difflib "
    "email enum fileinput fnmatch fractions functools getopt gettext glob gzip hashlib heapq hmac "
    "html http.client imaplib inspect io ipaddress itertools json locale logging lzma mailbox "
    "math mimetypes numbers operator optparse os pathlib pickle pkgutil platform plistlib pprint "
    "queue quopri random re reprlib sched secrets selectors shelve shlex shutil signal smtplib "
    "socket sqlite3 ssl statistics string struct subprocess tarfile tempfile textwrap threading "
    "timeit tokenize traceback types typing unittest urllib.parse uuid warnings weakref "
    "xml.dom zipfile zlib"
).split()


def sentences(limit: int | None = None, min_words: int = 5, max_words: int = 60) -> list[str]:
    """Unique sentences in a fixed order (same Python version -> same list, whatever the caller imported).

    They are read in a fresh interpreter that imports nothing but the standard library: a package
    imported earlier may have patched a module the corpus reads (torch replaces ``inspect.getfile`` by
    an undocumented wrapper), which dropped sentence 1050 from the list of any process that had
    imported torch and shifted every held-out range that a benchmark takes from it."""
    out = list(_fresh(min_words, max_words))
    return out[:limit] if limit else out


@functools.lru_cache(maxsize=None)
def _fresh(min_words: int, max_words: int) -> tuple[str, ...]:
    code = ("import json, runpy, sys; ns = runpy.run_path(sys.argv[1]); "
            "print(json.dumps(ns['_read'](int(sys.argv[2]), int(sys.argv[3]))))")
    res = subprocess.run([sys.executable, "-I", "-c", code, __file__, str(min_words), str(max_words)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"reading the corpus in a fresh {sys.executable} failed (exit {res.returncode}): "
                           f"{res.stderr.strip()[-500:]}")
    return tuple(json.loads(res.stdout))


def _read(min_words: int, max_words: int) -> list[str]:
    """The sentences of the modules' docstrings as this interpreter sees them."""
    out: list[str] = []
    seen: set[str] = set()
    for name in _MODULES:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(vars(mod)):
            obj = getattr(mod, attr, None)
            if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for s in doc_sentences(doc, min_words, max_words):
                if s not in seen:
                    seen.add(s)
                    out.append(s)
    return out


def doc_sentences(doc: str, min_words: int = 5, max_words: int = 60) -> list[str]:
    """The sentences of a docstring that the corpus keeps: MIN_WORDS..MAX_WORDS words, starting with a
    capital letter, no doctest prompt."""
    out = []
    for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", doc)):
        s = s.strip()
        if min_words <= len(s.split()) <= max_words and s[0].isupper() and ">>>" not in s:
            out.append(s)
    return out
