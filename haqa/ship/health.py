"""Is the shipped server answering: wait for llama-server's /health, then time one chat completion
through the openai client (what a user's client would send). Loopback addresses are never reached
through a proxy."""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

from haqa.errors import UserError
from haqa.ship.service import Service

PROMPT = "In one short sentence: what can you help me with?"


@dataclass(frozen=True)
class Health:
    tokens: int
    seconds: float
    reply: str

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy


def http_status(url: str, timeout: float = 5) -> int | None:
    """The HTTP status url answers with, or None when nothing answers."""
    try:
        with _NO_PROXY.open(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, http.client.HTTPException):
        return None


def _failed(service: Service, message: str) -> UserError:
    tail = service.log_tail().rstrip()
    return UserError(f"{message}; the last lines of its log:\n{tail or '(empty)'}",
                     hint=f"the server is installed as a {service.mode}: {service.describe()}")


def health_check(service: Service, base: str, alias: str, wait_s: float) -> Health:
    """Wait (at most wait_s) for llama-server's /health, then time one chat completion."""
    import httpx
    import openai

    deadline = time.monotonic() + wait_s
    next_look = 0.0
    while (status := http_status(f"{base}/health")) != 200:
        if time.monotonic() >= next_look:
            if not service.running():
                raise _failed(service, "llama-server stopped before it answered /health")
            next_look = time.monotonic() + 2
        if time.monotonic() > deadline:
            raise _failed(service, f"llama-server did not answer /health within {wait_s:g} s "
                                   f"(last answer: {status or 'none'})")
        time.sleep(0.5)
    client = openai.OpenAI(base_url=f"{base}/v1", api_key="haqa-ship", max_retries=0, timeout=max(wait_s, 60),
                           http_client=httpx.Client(trust_env=False))
    start = time.perf_counter()
    try:
        reply = client.chat.completions.create(model=alias, messages=[{"role": "user", "content": PROMPT}],
                                               max_tokens=32, temperature=0)
    except openai.OpenAIError as e:
        raise _failed(service, f"the chat completion failed: {e}") from None
    finally:
        client.close()
    seconds = time.perf_counter() - start
    tokens = reply.usage.completion_tokens if reply.usage else 0
    text = (reply.choices[0].message.content or "").strip() if reply.choices else ""
    if tokens <= 0 or not text:
        raise _failed(service, "the chat completion came back without any generated tokens")
    return Health(tokens=tokens, seconds=seconds, reply=text)


