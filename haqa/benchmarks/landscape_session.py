"""Measuring a landscape's points, in one session (a new landscape or a resumed one): quality once per
(quant, KV type), speed in the shuffled order under the pipeline's drift guard (points measured
while the anchor moved, or while other processes loaded this machine's CPU, are measured again),
and at the end the best few feasible points a second time. The file is saved after every step."""

from __future__ import annotations

import datetime as dt
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from haqa import ui
from haqa.benchmarks.foreign_load import CONTENDED, ForeignLoad
from haqa.benchmarks.landscape_file import MEASURED, Landscape, write
from haqa.benchmarks.landscape_grid import Grid
from haqa.errors import ToolFailed, UserError

REPEAT_TOP = 3  # best feasible points measured a second time at the end
MEASURE_ATTEMPTS = 3


@dataclass(frozen=True)
class Options:
    """How to measure: `quick` a two-point grid, `overrides` `--set` values, `seed` of the order,
    `fresh` not resuming, the `max_minutes` and `limit` of this session, `jobs` for a llama.cpp build,
    `repeat_top` best points measured again, `plan_only` measuring nothing, `quiet_guard` waiting for
    (and re-measuring after) other processes' load on this machine."""

    quick: bool = False
    overrides: tuple[str, ...] = ()
    seed: int = 0
    fresh: bool = False
    max_minutes: float | None = None
    limit: int | None = None
    jobs: int | None = None
    repeat_top: int = REPEAT_TOP
    plan_only: bool = False
    quiet_guard: bool = True


@dataclass
class Subject:
    """What a landscape is of: the target, the recipe, its model and corpus, and the names they were given as."""

    target: object
    recipe: object
    model: object
    source_facts: object
    corpus: object
    names: tuple[str, str]


def _budget_for(minutes: float | None) -> str:
    return "" if minutes is None else f" (stops after {minutes:g} min; run again to resume)"


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


class Session:
    """One session of measuring a landscape (a new one or a resumed one), saving the file after every step."""

    def __init__(self, runner, toolchain, device_source, subject: Subject, grid: Grid, data: dict, out: Path,
                 opts: Options, started: float):
        from haqa.measure.drift import DriftGuard

        self.runner, self.toolchain, self.device_source = runner, toolchain, device_source
        self.subject, self.data, self.out, self.opts, self.started = subject, data, out, opts, started
        self.synthetic = subject.source_facts.synthetic
        self.workload = subject.recipe.workload
        self.space = grid.space
        self.anchor_config = self.space.make({}).config
        self.load = ForeignLoad() if runner.shares_cpu and opts.quiet_guard else None
        self.guard = DriftGuard(self._anchor)
        self.candidates: dict[str, object] = {}
        self.session = {"started": now(), "host": platform.node()}
        data["sessions"].append(self.session)
        self.wall_before = data["wall_s"]
        self.save()

    def save(self) -> None:
        self.session["wall_s"] = round(time.monotonic() - self.started, 1)
        self.data["wall_s"] = round(self.wall_before + self.session["wall_s"], 1)
        write(self.out, self.data)

    def over_time(self) -> bool:
        return self.opts.max_minutes is not None and time.monotonic() - self.started > self.opts.max_minutes * 60

    def prepare(self, quant: str):
        """The quantized model on the device (llama-quantize, cached)."""
        from haqa.measure.quantize import quantize

        if quant not in self.candidates:
            m = self.subject.model
            self.candidates[quant], _ = quantize(self.runner, self.toolchain, self.device_source, m.sha256,
                                                 self.subject.source_facts.file_type, quant)
        return self.candidates[quant]

    def _anchor(self) -> float:
        from haqa.measure.bench import quick_decode

        if self.load:
            self.load.wait_quiet()
        return quick_decode(self.runner, self.toolchain, self.device_source, self.anchor_config)

    def measure_quality(self, reference_threads: int, settings) -> None:
        """Quality: once per (quant, KV type) that some measurable point uses."""
        from haqa.errors import failure_cause
        from haqa.measure.quality import measure_quality, reference_logits

        if self.synthetic:
            return
        data, model, corpus = self.data, self.subject.model, self.subject.corpus
        pairs = sorted({(p["values"]["quant"], p["values"]["kv_type"]) for p in data["points"]
                        if p["status"] != "pruned"})
        missing = [pq for pq in pairs if f"{pq[0]}|{pq[1]}" not in data["quality"]]
        if not missing:
            return
        try:
            reference = reference_logits(self.runner, self.toolchain, self.device_source, model.sha256, corpus,
                                         settings, reference_threads)
        except ToolFailed as e:
            raise UserError(f"computing the reference logits of {model.path} failed: {e}") from None
        for quant, kv in missing:
            if self.over_time():
                break
            ui.note(f"quality of {quant} with KV {kv}")
            try:
                q = measure_quality(self.runner, self.toolchain, self.prepare(quant), reference, corpus, settings,
                                    threads=self.subject.target.hardware.cores, cache_type_k=kv, cache_type_v=kv)
                data["quality"][f"{quant}|{kv}"] = q.as_dict()
            except ToolFailed as e:
                data["quality"][f"{quant}|{kv}"] = {"status": "failed", "cause": failure_cause(e),
                                                    "error": str(e)[-2000:]}
            self.save()

    def announce(self) -> None:
        data = self.data
        n_total = sum(p["status"] != "pruned" for p in data["points"])
        left = sum(p["status"] == "pending" for p in data["points"])
        ui.step(f"landscape {data['label']}: {len(data['points'])} points ({n_total} to measure, "
                f"{len(data['points']) - n_total} pruned by the memory model), {left} left"
                + _budget_for(self.opts.max_minutes))

    def measure_speed(self) -> None:
        """Speed: every point in the shuffled order, under the pipeline's drift guard."""
        data, guard, limit = self.data, self.guard, self.opts.limit
        queue = sorted((p for p in data["points"] if p["status"] == "pending"), key=lambda p: p["order"])
        n_total = sum(p["status"] != "pruned" for p in data["points"])
        fresh_points: list[dict] = []
        measured_now = 0
        while queue and not self.over_time() and (limit is None or measured_now < limit):
            if not guard.ready:
                guard.start()
                data["anchor"]["history"] += [{"event": "session", "started": self.session["started"]},
                                              guard.history[-1]]
            p = queue.pop(0)
            self._measure_point(p)
            measured_now += 1
            done = sum(x["status"] in MEASURED for x in data["points"])
            self._note_point(p, done, n_total, measured_now, len(queue))
            if p["status"] == "ok":
                fresh_points.append(p)
            if len(fresh_points) >= guard.every:
                self._check_drift(fresh_points, queue, done)
                fresh_points = []
            self.save()

    def _measure_point(self, p: dict) -> None:
        """One point, measured again (up to MEASURE_ATTEMPTS times) while other processes loaded the CPU."""
        load = self.load
        for attempt in range(1, MEASURE_ATTEMPTS + 1):
            if load:
                p["waited_s"] = round(p.get("waited_s", 0) + load.wait_quiet(), 1)
                load.start()
            self._bench_point(p)
            if not load:
                break
            p["foreign_cpu_share"] = round(load.share(), 3)
            if p["status"] != "ok" or p["foreign_cpu_share"] <= CONTENDED:
                break
            if attempt < MEASURE_ATTEMPTS:
                ui.note(f"other processes used {p['foreign_cpu_share']:.0%} of the CPU while it ran: measuring again")
            else:
                p["contended"] = True

    def _bench_point(self, p: dict) -> None:
        """llama-bench of one point (a point whose quality failed fails without it)."""
        from haqa.agent.trials import SPEED_POLICY
        from haqa.errors import failure_cause
        from haqa.measure.bench import run_bench

        cand = self.space.make(p["values"])
        q = None if self.synthetic else self.data["quality"].get(f"{cand.quant}|{cand.config.cache_type_k}")
        p["attempts"] = p.get("attempts", 0) + 1
        if not self.synthetic and (q is None or q.get("status") == "failed"):
            p.update(status="failed", cause=(q or {}).get("cause", "error"),
                     error="quality: " + ((q or {}).get("error") or "not measured"))
            return
        t0 = time.monotonic()
        try:
            bench = run_bench(self.runner, self.toolchain, self.prepare(cand.quant), cand.config,
                              prompt_tokens=self.workload.prompt_tokens, gen_tokens=self.workload.gen_tokens,
                              policy=SPEED_POLICY, log_path=self.runner.local_dir("logs") / f"landscape-{cand.key}.log")
            p.update(status="ok", bench=bench.as_dict())
            p.pop("cause", None)
            p.pop("error", None)
        except ToolFailed as e:
            p.update(status="failed", cause=failure_cause(e), error=str(e)[-2000:])
        p["elapsed_s"] = round(time.monotonic() - t0, 2)
        p["measured_at"] = now()

    def _note_point(self, p: dict, done: int, n_total: int, measured_now: int, queued: int) -> None:
        v = p["values"]
        speed = (f"decode {p['bench']['decode']['mean']:.1f} tok/s, prefill {p['bench']['prefill']['mean']:.0f} tok/s"
                 if p["status"] == "ok" else f"failed ({p.get('cause')})")
        elapsed = time.monotonic() - self.started
        eta = elapsed / measured_now * queued
        ui.note(f"[{done}/{n_total}] {v['quant']} kv {v['kv_type']} t{v['threads']} ngl {v['n_gpu_layers']} "
                f"fa {v['flash_attn']} ub {v['ubatch_size']} repack {v['repack']}: {speed} "
                f"({elapsed / 60:.1f} min, ~{eta / 60:.1f} min left)")

    def _check_drift(self, fresh_points: list[dict], queue: list[dict], done: int) -> None:
        """The anchor again; when it moved, the points measured since the last check go to the queue's front once."""
        seen = len(self.guard.history)
        ok = self.guard.check()  # on drift it also takes a new baseline
        self.data["anchor"]["history"] += [{**h, "after_points": done} for h in self.guard.history[seen:]]
        if ok:
            return
        for x in fresh_points:
            if x.get("drift_reruns", 0) < 1:
                x["drift_reruns"] = x.get("drift_reruns", 0) + 1
                x.setdefault("superseded", []).append(  # kept: how far a re-measurement moves
                    {"decode_mean": x["bench"]["decode"]["mean"], "prefill_mean": x["bench"]["prefill"]["mean"],
                     "measured_at": x.get("measured_at")})
                x["status"] = "pending"
                queue.insert(0, x)
            else:
                x["drift"] = "the anchor moved while it was measured (second attempt kept)"
        ui.note(f"drift guard: the anchor moved; {len(fresh_points)} point(s) will be measured again")

    def repeat_best(self) -> None:
        """The best feasible points once more: how much of a "best" is noise."""
        from haqa.agent.trials import SPEED_POLICY
        from haqa.errors import failure_cause
        from haqa.measure.bench import run_bench

        data, load = self.data, self.load
        land = Landscape(data, self.out)
        ranked = sorted(((o.score, p) for p, o in land.observations() if o.score is not None),
                        key=lambda sp: sp[0], reverse=True)
        done_keys = {r["key"] for r in data["repeats"]}
        for _, p in ranked[:self.opts.repeat_top]:
            if p["key"] in done_keys or self.over_time():
                continue
            ui.note(f"repeat of a best point: {p['values']['quant']} {p['key']}")
            cand = self.space.make(p["values"])
            rec = {"key": p["key"], "values": p["values"]}
            if load:
                load.wait_quiet()
                load.start()
            try:
                bench = run_bench(self.runner, self.toolchain, self.prepare(cand.quant), cand.config,
                                  prompt_tokens=self.workload.prompt_tokens, gen_tokens=self.workload.gen_tokens,
                                  policy=SPEED_POLICY)
                rec["bench"] = bench.as_dict()
            except ToolFailed as e:
                rec["failed"] = failure_cause(e)
            if load:
                rec["foreign_cpu_share"] = round(load.share(), 3)
            data["repeats"].append(rec)
            self.save()
        data["repeats_done"] = not self.over_time()

    def finish(self) -> dict:
        """The repeats once every point is measured, a last anchor check, and the file marked complete or not."""
        data, guard = self.data, self.guard
        left = [p for p in data["points"] if p["status"] == "pending"]
        if not left and not data.get("repeats_done") and not self.over_time():
            self.repeat_best()
        if guard.baseline is not None:
            seen = len(guard.history)
            guard.check()
            data["anchor"]["history"] += [{**h, "after_points": "end of session"} for h in guard.history[seen:]]
        data["complete"] = not left and bool(data.get("repeats_done"))
        if data["complete"]:
            data["finished"] = now()
        self.save()
        state = ("complete" if data["complete"]
                 else f"incomplete ({len(left)} points left; run the same command to resume)")
        ui.step(f"landscape {data['label']}: {state}; {data['wall_s'] / 60:.1f} min measured in all; "
                f"written to {self.out}")
        return data
