"""Evaluation text for quality measurement.

The default corpus, `python-docs`, is the language reference that ships inside CPython itself
(`pydoc_data.topics`, the text `help()` shows): it exists offline on every machine with Python. Its
sha256 is recorded with every quality figure, since it can differ between Python versions.
A recipe may instead name a text file (`[quality].corpus = "path/to/text.txt"`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from haqa import paths
from haqa.errors import UserError

DEFAULT_CORPUS = "python-docs"
MAX_CHARS = 200_000  # plenty for the chunks haqa scores; keeps the uploaded file small


@dataclass(frozen=True)
class Corpus:
    name: str
    path: Path
    sha256: str


def _python_docs() -> str:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        raise UserError("this Python has no pydoc_data (the text of help()), so the default corpus is missing",
                        hint="set [quality].corpus in the recipe to a text file") from None
    return "\n\n".join(topics[k] for k in sorted(topics))


def load_corpus(name: str | None, base_dir: Path | None = None) -> Corpus:
    name = name or DEFAULT_CORPUS
    if name == DEFAULT_CORPUS:
        text = _python_docs()[:MAX_CHARS]
    else:
        p = Path(name).expanduser()
        if not p.is_absolute() and base_dir is not None:
            p = base_dir / p
        if not p.is_file():
            what = ("is a folder, not a text file" if p.is_dir() else "no such file" if not p.exists()
                    else "is not a regular file")
            raise UserError(f"[quality].corpus: {p} {what}" if what != "no such file"
                            else f"[quality].corpus: no such file: {p}",
                            hint=f"use '{DEFAULT_CORPUS}' or a path to a text file")
        try:
            text = p.read_bytes().decode("utf-8")[:MAX_CHARS]
        except UnicodeDecodeError as e:
            raise UserError(f"[quality].corpus: {p} is not UTF-8 text "
                            f"(byte {e.object[e.start]:#04x} at offset {e.start})",
                            hint="convert it (iconv -f latin1 -t utf-8) or use the default corpus") from None
    data = text.encode()
    digest = hashlib.sha256(data).hexdigest()
    out = paths.cache_home() / "corpora" / f"{Path(name).stem}-{digest[:12]}.txt"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        part = out.with_name(out.name + ".part")
        part.write_bytes(data)
        part.replace(out)
    return Corpus(name=name, path=out, sha256=digest)
