"""A load test of llama-server as a bundle runs it: the server started on the device with the bundle's
own flags, real HTTP requests of the workload's shape (a prompt of exactly `prompt_tokens` tokens,
`gen_tokens` generated whatever the model would stop at), streamed, from `concurrency` clients at once.

Time to first token is measured by the client, from sending the request to the first streamed token;
a request's time ends at its last token. Each round starts every contender's server afresh, in a
rotated order (A B, B A, ...), so drift on the device hits every contender alike; a contender's figure
is the median of its per-round medians, with their range, and a ratio the median of the per-round
ratios. The server's peak resident memory is read from /proc at the end of each round (Linux).
"""

from __future__ import annotations

import json
import re
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import PurePath

from haqa import ui
from haqa.config.schema import Workload
from haqa.errors import ToolFailed
from haqa.measure.compare import per_round_ratio
from haqa.runner import detached
from haqa.runner.base import Runner

METHOD = ("load test of llama-server with the bundle's flags: streamed /completion requests of the workload's "
          "shape (prompt of exactly prompt_tokens tokens, gen_tokens generated with ignore_eos, no prompt cache), "
          "TTFT measured by the client; rounds interleaved, each server started afresh; medians of per-round "
          "medians with their range")
START_TIMEOUT_S = 600
REQUEST_TIMEOUT_S = 1800
_LISTENING = re.compile(r"listening on https?://[^\s]*?:(\d+)")


@dataclass(frozen=True)
class LoadContender:
    label: str  # "tuned", "default"
    quant: str
    model: PurePath  # on the device
    server_args: list[str]  # the bundle's flags (RuntimeConfig.server_args)
    description: str = ""


@dataclass(frozen=True)
class RequestTiming:
    """One request, as its client saw it."""

    ttft_s: float
    total_s: float
    generated: int

    @property
    def decode_tps(self) -> float:
        """Generation speed after the first token: what a user watching the reply sees."""
        after = self.total_s - self.ttft_s
        return (self.generated - 1) / after if self.generated > 1 and after > 0 else 0.0


@dataclass(frozen=True)
class Round:
    requests: list[RequestTiming]
    wall_s: float  # from the first request sent to the last one finished
    peak_rss_bytes: int | None = None

    @property
    def aggregate_tps(self) -> float:
        return sum(r.generated for r in self.requests) / self.wall_s if self.wall_s > 0 else 0.0

    def median(self, what: str) -> float:
        return statistics.median(getattr(r, what) for r in self.requests)

    def p95_request_s(self) -> float:
        times = sorted(r.total_s for r in self.requests)
        return times[min(len(times) - 1, max(0, round(0.95 * len(times)) - 1))]


@dataclass
class LoadSide:
    contender: LoadContender
    rounds: list[Round] = field(default_factory=list)
    error: str | None = None

    @property
    def measured(self) -> bool:
        return bool(self.rounds) and self.error is None

    def per_round(self) -> dict[str, list[float]]:
        return {"request_s": [r.median("total_s") for r in self.rounds],
                "ttft_s": [r.median("ttft_s") for r in self.rounds],
                "decode_tps": [r.median("decode_tps") for r in self.rounds],
                "p95_request_s": [r.p95_request_s() for r in self.rounds],
                "aggregate_tps": [r.aggregate_tps for r in self.rounds]}

    def summary(self) -> dict:
        c = self.contender
        out: dict = {"quant": c.quant, "server_args": c.server_args, "description": c.description}
        if not self.measured:
            out["not_measured"] = self.error or "not measured"
            return out
        units = {"request_s": "s", "ttft_s": "s", "decode_tps": "tokens/s", "p95_request_s": "s",
                 "aggregate_tps": "tokens/s"}
        for name, values in self.per_round().items():
            out[name] = {"median": round(statistics.median(values), 4), "min": round(min(values), 4),
                         "max": round(max(values), 4), "per_round": [round(v, 4) for v in values],
                         "unit": units[name], "basis": "measured: median of the per-round medians"}
        out["requests_per_round"] = len(self.rounds[0].requests)
        peaks = [r.peak_rss_bytes for r in self.rounds if r.peak_rss_bytes]
        out["peak_rss_bytes"] = max(peaks) if peaks else None
        out["peak_rss_basis"] = ("measured: VmHWM of llama-server at the end of each round" if peaks
                                 else "not measured (no /proc on the device)")
        return out


def ratios(tuned: LoadSide, other: LoadSide) -> dict | None:
    """Per-round ratios tuned/other, oriented so that above 1 is better for tuned: request time and TTFT
    as other/tuned (a shorter time is a speed-up), tok/s as tuned/other."""
    if not (tuned.measured and other.measured):
        return None
    a, b = tuned.per_round(), other.per_round()
    out = {}
    for name in a:
        num, den = (a[name], b[name]) if "tps" in name else (b[name], a[name])
        if any(x > 0 and y > 0 for x, y in zip(num, den, strict=False)):
            out[name] = per_round_ratio(num, den)
    return out


def load_test(runner: Runner, llama_server: PurePath, contenders: list[LoadContender], workload: Workload, *,
              rounds: int, requests_per_client: int, prompt_text: str, log_dir) -> list[LoadSide]:
    """Each contender's server under the workload, in `rounds` interleaved rounds. A contender whose server
    fails (does not start, crashes, answers with an error) is recorded with the reason; the others go on."""
    sides = [LoadSide(c) for c in contenders]
    for r in range(rounds):
        order = sides[r % len(sides):] + sides[:r % len(sides)]
        for side in order:
            if side.error:
                continue
            ui.note(f"load test round {r + 1}/{rounds}: {side.contender.label} ({side.contender.quant}), "
                    f"{workload.concurrency} client(s) x {requests_per_client} request(s)")
            try:
                with serving(runner, llama_server, side.contender, prompt_text=prompt_text, log_dir=log_dir) as server:
                    side.rounds.append(server.round(workload, requests_per_client))
            except ToolFailed as e:
                side.error = " ".join(line.strip() for line in str(e).splitlines() if line.strip())[:600]
                ui.note(f"load test of {side.contender.label} failed: {side.error}")
    return sides


@dataclass
class Server:
    """A llama-server running on the device, reached from here at `base`."""

    runner: Runner
    base: str
    pid: int | None
    prompt_source: list[int]

    def round(self, workload: Workload, requests_per_client: int) -> Round:
        """One warm-up request (not counted), then `concurrency` clients sending their requests."""
        self.request(self.prompt(0, workload.prompt_tokens), min(8, workload.gen_tokens))
        timings: list[RequestTiming] = []
        errors: list[BaseException] = []
        lock = threading.Lock()

        def client(i: int) -> None:
            try:
                for k in range(requests_per_client):
                    t = self.request(self.prompt(1 + i * requests_per_client + k, workload.prompt_tokens),
                                     workload.gen_tokens)
                    with lock:
                        timings.append(t)
            except BaseException as e:  # noqa: BLE001 - re-raised below, in the caller's thread
                errors.append(e)

        threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(workload.concurrency)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - start
        if errors:
            raise errors[0]
        return Round(timings, wall, self.peak_rss())

    def prompt(self, index: int, tokens: int) -> list[int]:
        """A prompt of exactly `tokens` token ids, a different slice of the corpus for each index."""
        source = self.prompt_source
        start = (index * 97) % max(1, len(source) - tokens) if len(source) > tokens else 0
        out = source[start:start + tokens]
        while len(out) < tokens:
            out += source[:tokens - len(out)]
        return out

    def request(self, prompt: list[int], gen_tokens: int) -> RequestTiming:
        import httpx

        body = {"prompt": prompt, "n_predict": gen_tokens, "ignore_eos": True, "stream": True,
                "cache_prompt": False, "temperature": 0.0}
        first = None
        generated = 0
        start = time.perf_counter()
        try:
            with httpx.Client(trust_env=False, timeout=REQUEST_TIMEOUT_S) as client, \
                    client.stream("POST", f"{self.base}/completion", json=body) as reply:
                if reply.status_code != 200:
                    raise ToolFailed(["POST", "/completion"], reply.status_code,
                                     f"llama-server answered {reply.status_code}: {reply.read()[:400]!r}")
                for line in reply.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("content") or chunk.get("tokens"):
                        first = first or time.perf_counter()
                        generated += len(chunk.get("tokens") or [None])
                    if chunk.get("stop"):
                        generated = int(chunk.get("timings", {}).get("predicted_n", generated))
                        break
        except (httpx.HTTPError, json.JSONDecodeError) as e:
            raise ToolFailed(["POST", "/completion"], -1, f"the request to llama-server failed: {e}") from None
        end = time.perf_counter()
        return RequestTiming(ttft_s=(first or end) - start, total_s=end - start, generated=generated)

    def peak_rss(self) -> int | None:
        if self.pid is None:
            return None
        r = self.runner.run(["cat", f"/proc/{self.pid}/status"], timeout=60)
        m = re.search(r"(?m)^VmHWM:\s+(\d+) kB", r.stdout) if r.ok else None
        return int(m.group(1)) * 1024 if m else None


@contextmanager
def serving(runner: Runner, llama_server: PurePath, contender: LoadContender, *, prompt_text: str,
            log_dir) -> Iterator[Server]:
    """llama-server started detached on the device on a port it picks (--port 0), reached through the
    runner's forward; stopped on the way out, whatever happened. Prompts are cut from prompt_text as the
    server's tokenizer splits it."""
    folder = runner.home / "load" / contender.label
    runner.mkdir(folder)
    pidfile, log = folder / "server.pid", folder / "server.log"
    argv = [str(llama_server), "-m", str(contender.model), *contender.server_args, "--host", "127.0.0.1",
            "--port", "0", "--alias", contender.label, "--log-file", str(folder / "llama.log")]
    detached.stop(runner, pidfile, folder)
    started = detached.start(runner, folder, pidfile, log, argv)
    if not started.ok:
        raise ToolFailed(argv, started.returncode, started.stderr_tail)
    try:
        port = _wait_for_port(runner, pidfile, log, argv)
        with runner.forward(port) as (host, local_port):
            base = f"http://{host}:{local_port}"
            _wait_for_health(runner, base, pidfile, log, argv)
            pid_text = runner.read_text(pidfile).strip()
            server = Server(runner, base, int(pid_text) if pid_text.isdigit() else None, [])
            server.prompt_source = _tokens(base, prompt_text)
            yield server
    finally:
        detached.stop(runner, pidfile, folder)
        if log_dir is not None:
            try:
                (log_dir / f"load-{contender.label}.log").write_text(_tail(runner, log, 200))
            except OSError:
                pass


def _tail(runner: Runner, log: PurePath, lines: int = 30) -> str:
    return runner.run(["tail", "-n", str(lines), str(log)], timeout=60).stdout


def _wait_for_port(runner: Runner, pidfile: PurePath, log: PurePath, argv: list[str]) -> int:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        m = _LISTENING.search(_tail(runner, log, 200))
        if m:
            return int(m.group(1))
        if not detached.running(runner, pidfile):
            raise ToolFailed(argv, 1, f"llama-server stopped before it listened:\n{_tail(runner, log)}")
        time.sleep(0.3)
    raise ToolFailed(argv, -1, f"llama-server did not listen within {START_TIMEOUT_S} s", timed_out=True)


def _wait_for_health(runner: Runner, base: str, pidfile: PurePath, log: PurePath, argv: list[str]) -> None:
    import httpx

    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(trust_env=False, timeout=10) as client:
        while time.monotonic() < deadline:
            try:
                if client.get(f"{base}/health").status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if not detached.running(runner, pidfile):
                raise ToolFailed(argv, 1, f"llama-server stopped before it was ready:\n{_tail(runner, log)}")
            time.sleep(0.3)
    raise ToolFailed(argv, -1, f"llama-server was not ready within {START_TIMEOUT_S} s", timed_out=True)


def _tokens(base: str, text: str) -> list[int]:
    """Token ids of `text`, from the server's own tokenizer: the prompts' source."""
    import httpx

    with httpx.Client(trust_env=False, timeout=120) as client:
        reply = client.post(f"{base}/tokenize", json={"content": text[:60_000], "add_special": False})
    tokens = reply.json().get("tokens", []) if reply.status_code == 200 else []
    if len(tokens) < 16:
        raise ToolFailed(["POST", "/tokenize"], reply.status_code, "llama-server returned too few tokens for prompts")
    return [int(t) for t in tokens]
