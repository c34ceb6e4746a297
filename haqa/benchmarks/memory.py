"""Memory-model benchmark: measured peak RSS of llama-bench over a grid of configurations against the
memory model's prediction; optionally refits the model's calibration.

The grid spans real SmolLM2 quantizations and synthetic shapes (Llama-3.2-1B, Qwen2.5-1.5B widths
with fewer layers), ubatch sizes, context depths, KV-cache types, repack on/off and load modes.
The calibration (two numbers) is fitted on the SmolLM2 and synthetic Llama rows; the synthetic Qwen
rows (another architecture, other widths) are held out to show how the model generalises.
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from haqa import ui
from haqa.config import find_file, load_recipe, load_target
from haqa.hashing import cached_sha256
from haqa.measure import peak_rss
from haqa.measure.quantize import quantize
from haqa.model import memory
from haqa.model.source import resolve_model
from haqa.model.synth import synthetic_q8_0
from haqa.runner import LocalRunner
from haqa.toolchain import ensure_toolchain

MIB = 2**20


@dataclass(frozen=True)
class Point:
    model: str
    p: int
    n: int
    d: int
    ub: int
    ctk: str = "f16"
    ctv: str = "f16"
    repack: int = 1
    load_mode: str = "auto"

    @property
    def n_ctx(self) -> int:
        return self.p + self.n + self.d

    def args(self) -> list[str]:
        fa = "on" if self.ctv != "f16" else "auto"
        return ["-p", str(self.p), "-n", str(self.n), "-d", str(self.d), "-ub", str(self.ub), "-ctk", self.ctk,
                "-ctv", self.ctv, "-fa", fa, "--repack", str(self.repack), "-lm", self.load_mode]

    def label(self) -> str:
        extra = []
        if self.ctk != "f16":
            extra.append(f"kv {self.ctk}")
        if not self.repack:
            extra.append("no repack")
        if self.load_mode != "auto":
            extra.append(f"lm {self.load_mode}")
        test = f"pp{self.p}" if self.p else f"tg{self.n}@d{self.d}"
        return f"{test} ub{self.ub}" + (f" ({', '.join(extra)})" if extra else "")


CONFIGS = [
    dict(p=512, n=0, d=0, ub=512), dict(p=512, n=0, d=0, ub=128), dict(p=0, n=32, d=1024, ub=512),
    dict(p=0, n=32, d=3000, ub=512, ctk="q8_0", ctv="q8_0"), dict(p=1024, n=0, d=0, ub=256, ctk="q4_0", ctv="q4_0"),
    dict(p=256, n=0, d=0, ub=256, repack=0), dict(p=256, n=0, d=0, ub=256, load_mode="none"),
]
QUICK_CONFIGS = CONFIGS[:2]


def _models(runner, toolchain, quick: bool) -> dict[str, tuple[Path, bool]]:
    """name -> (GGUF path, held out?)"""
    recipe = load_recipe("smollm2-135m")
    src = resolve_model(recipe, find_file("recipes", "smollm2-135m").parent)
    out: dict[str, tuple[Path, bool]] = {}
    for q in (["Q8_0"] if quick else ["Q8_0", "Q4_K_M", "Q4_0"]):
        path, _ = quantize(runner, toolchain, src.path, src.sha256, "Q4_1", q)
        out[f"SmolLM2-135M {q}"] = (Path(path), False)
    if quick:
        return out
    for like, layers, quants, held_out in (("llama-3.2-1b", 4, ["Q4_K_M", "Q8_0"], False),
                                           ("qwen2.5-1.5b", 4, ["Q4_0", "Q4_K_M"], True)):
        q8 = synthetic_q8_0(like, layers=layers)
        for q in quants:
            path, _ = quantize(runner, toolchain, q8, cached_sha256(q8), "Q8_0", q)
            out[f"synthetic {like} ({layers} layers) {q}"] = (Path(path), held_out)
    return out


def measure_grid(quick: bool = False) -> list[dict]:
    runner = LocalRunner()
    target = load_target("local")
    toolchain = ensure_toolchain(runner, target)
    rows = []
    import sys

    for name, (path, held_out) in _models(runner, toolchain, quick).items():
        for cfg in (QUICK_CONFIGS if quick else CONFIGS):
            point = Point(model=name, **cfg)
            argv = [str(toolchain.bin("llama-bench")), "-m", str(path), *point.args(), "-r", "1",
                    "-t", str(target.hardware.cores), "-o", "json"]
            result = runner.run(peak_rss.wrap(sys.executable, argv), timeout=1800)
            if not result.ok:
                ui.note(f"{name} {point.label()}: failed: {result.stderr_tail[-300:]}")
                continue
            rows.append({"model": name, "file": str(path), "held_out": held_out, "config": point.label(),
                         "point": point.__dict__, "measured_bytes": peak_rss.parse(result.stderr_tail)})
            ui.note(f"{name:<40} {point.label():<32} {rows[-1]['measured_bytes'] / MIB:8.1f} MiB")
    return rows


def _kwargs(row: dict) -> dict:
    pt = row["point"]
    hw = load_target("local").hardware
    return dict(n_ctx=pt["p"] + pt["n"] + pt["d"], ubatch=pt["ub"], type_k=pt["ctk"], type_v=pt["ctv"],
                repack=bool(pt["repack"]), arch=hw.arch, cpu_features=hw.cpu_features, load_mode=pt["load_mode"],
                bench_depth=pt["d"])


def _predict(row: dict, cal: memory.Calibration) -> float:
    shape = memory.ModelShape.from_gguf(Path(row["file"]))
    return memory.predict(shape, **_kwargs(row), calibration=cal).total


def fit(rows: list[dict]) -> memory.Calibration:
    """Least squares on the fit rows: what weights and KV do not explain = overhead + c * ubatch * n_ff."""
    train = [r for r in rows if not r["held_out"]]
    zero = memory.Calibration(overhead_bytes=0.0, per_ubatch_ff=0.0)
    X, y = [], []
    for r in train:
        shape = memory.ModelShape.from_gguf(Path(r["file"]))
        kw = _kwargs(r)
        known = memory.predict(shape, **kw, calibration=zero).total
        x = memory.features(shape, tokens=kw["n_ctx"], ubatch=kw["ubatch"], n_ctx=kw["n_ctx"])
        X.append([1.0, x["ubatch_ff"]])
        y.append(r["measured_bytes"] - known)
    coef, *_ = np.linalg.lstsq(np.array(X), np.array(y), rcond=None)
    coef = np.maximum(coef, 0.0)
    return memory.Calibration(overhead_bytes=float(coef[0]), per_ubatch_ff=float(coef[1]),
                              fitted_on=f"{len(train)} llama-bench runs (SmolLM2, synthetic Llama-3.2-1B widths) "
                                        f"on {platform.machine()}, {dt.date.today().isoformat()}")


def naive(row: dict) -> float:
    """The usual rule of thumb: the weights' size plus the full KV cache (f16 unless quantized)."""
    shape = memory.ModelShape.from_gguf(Path(row["file"]))
    pt = row["point"]
    n_ctx = pt["p"] + pt["n"] + pt["d"]
    return shape.tensor_bytes + memory.kv_bytes(shape, memory.padded(n_ctx), pt["ctk"], pt["ctv"])


def report(rows: list[dict], cal: memory.Calibration) -> tuple[str, dict]:
    lines = ["| model | configuration | measured MiB | predicted MiB | error | rule of thumb error | set |",
             "|---|---|---:|---:|---:|---:|---|"]
    errors = {"fit": [], "held out": []}
    naive_errors = []
    for r in rows:
        pred = _predict(r, cal)
        err = (pred - r["measured_bytes"]) / r["measured_bytes"]
        nerr = (naive(r) - r["measured_bytes"]) / r["measured_bytes"]
        naive_errors.append(abs(nerr))
        subset = "held out" if r["held_out"] else "fit"
        errors[subset].append(abs(err))
        lines.append(f"| {r['model']} | {r['config']} | {r['measured_bytes'] / MIB:.1f} | {pred / MIB:.1f} | "
                     f"{err * 100:+.1f} % | {nerr * 100:+.1f} % | {subset} |")
    every = errors["fit"] + errors["held out"]
    summary = {k: {"n": len(v), "median_abs_error": statistics.median(v) if v else None,
                   "max_abs_error": max(v) if v else None}
               for k, v in {**errors, "all": every}.items()}
    lines.append("")
    lines.append(f"- rule of thumb (weights file + full KV cache): median |error| "
                 f"{statistics.median(naive_errors) * 100:.1f} %, worst {max(naive_errors) * 100:.1f} %")
    for k, s in summary.items():
        if s["n"]:
            lines.append(f"- {k}: {s['n']} configurations, median |error| {s['median_abs_error'] * 100:.1f} %, "
                         f"worst {s['max_abs_error'] * 100:.1f} %")
    return "\n".join(lines), summary


def run(*, quick: bool = False, refit: bool = False, data_out: Path | None = None,
        rows: list[dict] | None = None) -> tuple[str, dict]:
    rows = rows if rows is not None else measure_grid(quick=quick)
    cal = memory.Calibration.load()
    if refit and not quick:
        cal = fit(rows)
        memory.CALIBRATION.parent.mkdir(parents=True, exist_ok=True)
        memory.CALIBRATION.write_text(json.dumps(cal.__dict__, indent=2) + "\n")
        memory._load_calibration.cache_clear()
    if data_out:
        data_out.parent.mkdir(parents=True, exist_ok=True)
        data_out.write_text(json.dumps(rows, indent=1) + "\n")
    return report(rows, cal)
