"""Secrets: which values are secret, and their removal from every text haqa prints or stores.

A value is secret when it is
- the value of a variable that holds credentials: the known ones (KNOWN) and any variable whose name
  says KEY, TOKEN, SECRET, PASSWORD, PASSWD, PASSPHRASE or CREDENTIAL (SECRET_WORDS), at least
  MIN_LENGTH characters long (so `OPENAI_API_KEY=x` does not blank out every x) and not the path of an
  existing file (HF_TOKEN_PATH, SSH_AUTH_SOCK-like values name a file, they are not the secret);
- the password of a URL in the environment (OLLAMA_HOST=http://user:password@host:11434);
- the token in the Hugging Face token file (where `hf auth login` writes it), and any value haqa was
  handed at run time (`remember`, e.g. the token huggingface_hub's get_token() returned);
and whatever the source, text in the shape of a credential is masked too (PATTERNS: `Bearer <token>`,
an Authorization header, `sk-...` and `hf_...` keys, user:password@ in a URL, `...KEY=value`).

`redact(text)` masks all of that (also a secret cut off at either end of a truncated text);
`redact_obj` does it through nested dicts and lists, `RedactingStream` to everything written to a
stream. Where it is applied: the console and the CLI's output (haqa/ui.py, haqa/cli), the trial store,
the LLM proposer's refusal reasons, the runners' tool logs and the bundle (haqa/bundle/writer.py).
run.sh (haqa/bundle/run_script.py) starts llama-server without the variables `secret_name` selects.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

MASK = "***"
MIN_LENGTH = 8
# Shorter than this, the end of a truncated text is not taken for the start of a secret.
MIN_PARTIAL = 6
KNOWN = ("OPENAI_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HAQA_SSH_KEY_PASSPHRASE", "LLAMA_API_KEY")
SECRET_WORDS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "CREDENTIAL")

_TOKEN_CHARS = r"[A-Za-z0-9._~+/-]"
PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # user:password@ in a URL
    (re.compile(r"(?<=://)[^\s/@:'\"]+:[^\s/@'\"]+(?=@)"), f"{MASK}:{MASK}"),
    # an Authorization header, as a header line or in a repr of headers: keep the scheme, mask the rest
    (re.compile(r"(?i)(\b(?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?(?:(?:bearer|basic|token|digest)\s+)?)"
                r"[^\s'\",;}\]]+"), rf"\1{MASK}"),
    (re.compile(rf"(?i)(\bbearer\s+){_TOKEN_CHARS}{{8,}}=*"), rf"\1{MASK}"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), MASK),  # OpenAI-style keys (sk-..., sk-proj-..., sk-ant-...)
    (re.compile(r"\bhf_[A-Za-z0-9]{30,}"), MASK),  # Hugging Face tokens
    (re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), MASK),  # GitHub tokens
    (re.compile(r"\bAKIA[0-9A-Z]{16}\b"), MASK),  # AWS access key ids
    # NAME=value where NAME ends in what it is: an environment dump, a query string (?api_key=...); not
    # gen_tokens=16
    (re.compile(rf"(?i)(\b[A-Za-z0-9_]*(?:{'|'.join(SECRET_WORDS)}|CREDENTIALS)=)[^\s&'\",;]+"), rf"\1{MASK}"),
]

_remembered: set[str] = set()
_lock = threading.Lock()
_cache: tuple[tuple, list[str]] | None = None


def secret_name(name: str) -> bool:
    """Whether a variable of this name holds a credential (by its name alone)."""
    upper = name.upper()
    return upper in KNOWN or any(w in upper for w in SECRET_WORDS)


def remember(value: str | None) -> None:
    """Treat `value` as a secret from now on in this process (a token a library handed to haqa)."""
    if value and len(value.strip()) >= MIN_LENGTH:
        with _lock:
            _remembered.add(value.strip())


def _hf_token_file() -> Path:
    """Where huggingface_hub keeps the token of `hf auth login` (its constants.HF_TOKEN_PATH)."""
    if os.environ.get("HF_TOKEN_PATH"):
        return Path(os.environ["HF_TOKEN_PATH"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "token"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "huggingface" / "token"


def _is_path(value: str) -> bool:
    try:
        return value.startswith(("/", "~")) and os.path.exists(os.path.expanduser(value))
    except (OSError, ValueError):
        return False


def _url_password(value: str) -> str | None:
    if "://" not in value or "@" not in value:
        return None
    try:
        return urllib.parse.urlsplit(value.strip()).password
    except ValueError:
        return None


def _from_environment() -> list[str]:
    found = []
    for name, value in os.environ.items():
        value = value.strip()
        if secret_name(name) and (name.upper() in KNOWN or not _is_path(value)):
            found.append(value)
        if password := _url_password(value):
            found.append(urllib.parse.unquote(password))
            found.append(password)
    return found


def secret_values() -> list[str]:
    """Every secret value known now, longest first (so a secret containing another is masked whole)."""
    global _cache
    token_file = _hf_token_file()
    try:
        stat = token_file.stat()
        file_key = (str(token_file), stat.st_mtime_ns, stat.st_size)
    except OSError:
        file_key = None
    key = (tuple(os.environ.items()), file_key, tuple(sorted(_remembered)))
    cached = _cache
    if cached is not None and cached[0] == key:
        return cached[1]
    values = set(_from_environment()) | _remembered
    if file_key:
        try:
            values.add(token_file.read_text(errors="replace").strip())
        except OSError:
            pass
    forms = set()
    for v in values:
        if len(v) >= MIN_LENGTH:  # and the ways a value is written inside URLs and JSON strings
            forms |= {v, urllib.parse.quote(v, safe=""), json.dumps(v)[1:-1]}
    ordered = sorted(forms, key=len, reverse=True)
    _cache = (key, ordered)
    return ordered


def _mask_cut_ends(text: str, value: str) -> str:
    """Mask the part of `value` a truncated text kept at its end (a prefix) or its start (a suffix)."""
    if len(text) < MIN_PARTIAL:
        return text
    tail, head = text[-MIN_PARTIAL:], text[:MIN_PARTIAL]
    if tail in value:
        k = max((k for k in range(MIN_PARTIAL, len(value)) if text.endswith(value[:k])), default=0)
        if k:
            text = text[:-k] + MASK
    if head in value:
        k = max((k for k in range(MIN_PARTIAL, len(value)) if text.startswith(value[-k:])), default=0)
        if k:
            text = MASK + text[k:]
    return text


def redact(text: str) -> str:
    """`text` with every secret value and everything shaped like a credential replaced by ***."""
    if not text:
        return text
    for value in secret_values():
        if value in text:
            text = text.replace(value, MASK)
        text = _mask_cut_ends(text, value)
    for pattern, replacement in PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_obj(obj: Any) -> Any:
    """A copy of a JSON-like object (dicts, lists, tuples, strings, numbers) with its strings redacted."""
    if isinstance(obj, str):
        return redact(obj)
    if isinstance(obj, dict):
        return {redact(k) if isinstance(k, str) else k: redact_obj(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact_obj(v) for v in obj]
    return obj


def redact_bytes(data: bytes) -> bytes:
    """Redacted UTF-8 text; anything else (a PNG) as it is."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return data
    return redact(text).encode("utf-8")


class RedactingStream:
    """A text stream that passes what is written to `target()`, redacted. Whole lines go out at a time
    (the rest at flush), so a secret written in two pieces is still caught. `target` is looked up at
    each write: the stream click's test runner or pytest's capture installs is the one written to."""

    _PASSED = frozenset({"isatty", "fileno", "encoding", "errors", "closed", "name", "mode", "writable",
                         "readable", "seekable", "line_buffering", "newlines"})

    def __init__(self, target: Callable[[], TextIO]):
        self._target = target
        self._pending = ""
        self._write_lock = threading.Lock()

    def _out(self) -> TextIO:
        out = self._target()
        # rich's live display replaces sys.stderr by a proxy that prints through the console: write to
        # the stream behind it, as rich itself does
        return getattr(out, "rich_proxied_file", out)

    def write(self, s: str) -> int:
        with self._write_lock:
            self._pending += s
            if "\n" in self._pending:
                head, _, self._pending = self._pending.rpartition("\n")
                self._out().write(redact(head + "\n"))
        return len(s)

    def flush(self) -> None:
        with self._write_lock:
            if self._pending:
                pending, self._pending = self._pending, ""
                self._out().write(redact(pending))
        self._out().flush()

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        if name not in self._PASSED:  # nothing that writes past the redaction (buffer, a proxied file)
            raise AttributeError(name)
        return getattr(self._out(), name)


@contextlib.contextmanager
def redacted_std_streams() -> Iterator[None]:
    """sys.stdout and sys.stderr redacted while the block runs (the CLI runs each command in one)."""
    out, err = sys.stdout, sys.stderr
    wrapped = RedactingStream(lambda: out), RedactingStream(lambda: err)
    sys.stdout, sys.stderr = wrapped
    try:
        yield
    finally:
        for stream in wrapped:
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = out, err
