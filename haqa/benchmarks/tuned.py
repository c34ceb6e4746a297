"""Tuned against what users run today (docs/BENCHMARKS.md tables 1, 4 and 5).

Table 1 runs `haqa deploy` (heuristic agent) on the local target for each recipe and reads the
side-by-side comparison from its lock: the chosen configuration against (a) Q4_K_M with llama.cpp's
default flags and (b) the unquantized model with default flags, measured in interleaved rounds in
the same run. Table 4 puts the tuned decode speed beside the roofline: measured memory bandwidth /
bytes read per token. Table 5 is the same for the GPU run kept in docs/data/gpu/.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from haqa.bundle.lock import LOCK_NAME, Lock, load
from haqa.bundle.lock.records import Contender, Ratios

RECIPES = ["smollm2-135m", "synth-llama-3.2-1b", "synth-llama-3.2-3b"]
QUICK_RECIPES = ["synth-tiny"]
SEED_SPEEDUP = 2.3  # the seed result to beat: decode speed-up over the unoptimized deployment


def roofline(lock: Lock, bandwidth_gbs: float) -> dict:
    """Upper bound on decode tok/s for the lock's chosen deployment, from the memory model's weight
    bytes (every weight but the embedding table's unused rows) plus the KV cache read at the decode
    test's mean depth."""
    pred = lock.metrics.memory.deployment_predicted
    w = lock.recipe.workload
    depth = w.prompt_tokens + w.gen_tokens / 2
    per_token = pred.weights_bytes + pred.kv_bytes * depth / lock.runtime.ctx_size
    bound = bandwidth_gbs * 1e9 / per_token
    decode = lock.comparison.contenders["tuned"].decode.median
    return {"bytes_per_token": round(per_token), "bandwidth_gbs": bandwidth_gbs, "bound_tps": round(bound, 1),
            "decode_tps": decode, "fraction": round(decode / bound, 3),
            "basis": "bytes per token predicted by haqa's memory model from the lock; bandwidth measured"}


def measure(recipes: list[str], data_dir: Path, target: str = "local") -> list[Lock]:
    """Deploy each recipe (heuristic agent) and keep its lock, which table 1 is drawn from."""
    from haqa.pipeline import deploy

    data_dir.mkdir(parents=True, exist_ok=True)
    locks = []
    with tempfile.TemporaryDirectory(prefix="haqa-bench-") as tmp:
        for name in recipes:
            result = deploy(target, name, Path(tmp) / f"{name}@{target}", agent="heuristic")
            lock = load(result.bundle / LOCK_NAME)
            kept = data_dir / f"{name}@{target}.json"
            earlier = load(kept) if kept.exists() else None
            if earlier and lock.selection.new_trials == 0 and _same_result(earlier, lock):
                lock = earlier  # the lock of the run that measured: its drift guard and trial counts
            else:
                kept.write_text(lock.dumps(indent=1))
            locks.append(lock)
    return locks


def _same_result(a: Lock, b: Lock) -> bool:
    """Same choice from the same measurements: a re-run that only read its caches."""
    return all(getattr(a, k) == getattr(b, k) for k in ("model", "runtime", "comparison", "trials", "llama_cpp"))


def _fmt_side(label: str, side: Contender) -> str:
    if not side.measured:
        return f"| {label} | {side.quant} | {side.why_not_measured} | | | | | |"
    q = side.quality
    kld = f"{q.kld_mean:.4f}" if q else "n/a (synthetic)"
    return (f"| {label} | {side.quant} | {side.decode.median:.1f} | {side.prefill.median:.1f} "
            f"| {side.time_to_first_token_s.value * 1000:.0f} | {(side.peak_rss_bytes or 0) / 2**20:.0f} "
            f"| {kld} | {side.config.config().describe()} |")


def _ratio(r: Ratios | str | None) -> str:
    if not isinstance(r, Ratios):
        return str(r)
    d, p = r.decode, r.prefill
    mem = r.peak_rss.ratio
    return (f"decode x{d.median:.2f} ({d.min:.2f}..{d.max:.2f}), prefill/TTFT x{p.median:.2f} "
            f"({p.min:.2f}..{p.max:.2f}), peak memory x{mem if mem is not None else 'n/a'}")


def table(locks: list[Lock]) -> str:
    out = []
    for lock in locks:
        w, comp, sel = lock.recipe.workload, lock.comparison, lock.selection
        out += [f"**{lock.recipe.name}** on {lock.target.name} "
                f"({'synthetic weights' if lock.synthetic else 'real weights'}; "
                f"prompt {w.prompt_tokens}, generate {w.gen_tokens}; {sel.trials} trials, "
                f"{sel.proposer} agent; {lock.created[:10]})", "",
                "| deployment | quant | decode tok/s | prefill tok/s | TTFT ms | peak RSS MiB | KLD | flags |",
                "|---|---|---|---|---|---|---|---|"]
        for label in ("tuned", "default", "unquantized"):
            out.append(_fmt_side(label, comp.contenders[label]))
        out += ["", f"- tuned / (a) default: {_ratio(comp.ratios.get('tuned/default'))}",
                f"- tuned / (b) unquantized: {_ratio(comp.ratios.get('tuned/unquantized'))}", ""]
    return "\n".join(out)


def roofline_table(locks: list[Lock], bandwidth: dict, gpu: bool = False) -> str:
    key = "gpu" if gpu else "cpu"
    bw = bandwidth[key]
    lines = [f"Bandwidth: {bw['median_gbs']} GB/s median ({bw['min_gbs']}..{bw['best_gbs']}) over {bw['repeats']} "
             f"copies of {bw['bytes_per_copy'] / 2**30:g} GiB, {bw['method']}, {bw['counted']} "
             "(haqa/benchmarks/bandwidth.py).", "",
             "| model | tuned | bytes read per token (predicted) | roofline bound tok/s "
             "| tuned decode tok/s (measured) | fraction |",
             "|---|---|---|---|---|---|"]
    for lock in locks:
        r = roofline(lock, bw["median_gbs"])
        lines.append(f"| {lock.recipe.name} | {lock.model.file_type} | {r['bytes_per_token'] / 2**20:.0f} MiB "
                     f"| {r['bound_tps']:.0f} | {r['decode_tps']:.1f} | {r['fraction'] * 100:.0f} % |")
    return "\n".join(lines) + "\n"


def gpu_section(gpu_dir: Path) -> str | None:
    """Table 5 from the kept GPU run, or None when there is none."""
    lock_file = gpu_dir / LOCK_NAME
    if not lock_file.is_file():
        return None
    lock = load(lock_file)
    bandwidth = json.loads((gpu_dir / "bandwidth.json").read_text())
    gpu = lock.target.facts.hardware.gpu
    return "\n".join([
        f"Run on {gpu.name} ({lock.target.name}), {lock.created[:10]}, llama.cpp "
        f"{lock.llama_cpp.commit[:8]} built with CUDA (`{json.dumps(lock.llama_cpp.cmake_options)}`), "
        f"by `scripts/gpu-run.sh` (see docs/data/gpu/run.log for what ran and how long each step took). "
        "The lock, REPORT.md and pareto.png it wrote are kept in docs/data/gpu/.", "",
        table([lock]),
        "Roofline against the GPU's measured bandwidth:", "",
        roofline_table([lock], bandwidth, gpu=True),
    ])


def gpu_landscape_note(landscape_file: Path, bandwidth_file: Path) -> str | None:
    """A paragraph on a GPU landscape kept without a deploy (the H200 run): where it was measured, its best
    point against the roofline of the measured GPU bandwidth; None when the files are not there."""
    if not landscape_file.is_file() or not bandwidth_file.is_file():
        return None
    from haqa.benchmarks.landscape_file import Landscape

    land = Landscape.load(landscape_file)
    bw = json.loads(bandwidth_file.read_text())["gpu"]
    _, point = land.best()
    v, decode = point["values"], point["bench"]["decode"]
    per_token = land.weight_bytes[v["quant"]]
    bound = bw["median_gbs"] * 1e9 / per_token
    gpu = land.data["target"]["facts"]["hardware"]["gpu"]
    return (f"A second GPU machine, {gpu['name']} ({land.data['target']['name']}), was measured for the search "
            f"benchmark only: the landscape {land.label} ({len(land.data['points'])} points: "
            "quant x GPU layers x flash "
            f"attention x KV type, {land.data['wall_s'] / 60:.1f} min, {land.data['created'][:10]}; "
            "replayed in the search "
            f"section above; run log in {bandwidth_file.parent}/run.log). Its fastest point, {v['quant']} with "
            f"{v['n_gpu_layers']} GPU layers, flash attention {v['flash_attn']}, KV {v['kv_type']}, decodes "
            f"{decode['mean']:.1f} ± {decode['stddev']:.1f} tok/s (n={decode['repetitions']}): "
            f"{decode['mean'] / bound:.0%} of "
            f"the roofline {bound:.0f} tok/s set by the GPU's measured copy bandwidth, {bw['median_gbs']:g} GB/s "
            f"(median of {bw['repeats']}; the datasheet says {gpu['mem_bandwidth_gbs']:g} GB/s), over "
            f"{per_token / 2**30:.2f} GiB of weights read per token (predicted by the memory model).")
