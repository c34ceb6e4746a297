"""The final word's last step: the chosen configuration measured through what ships, its llama-server with
the bundle's flags under the workload's requests (haqa/measure/load.py), against the default deployment's.

It decides one thing: when the default deployment is a feasible finalist and the load test finds the
chosen configuration slower on what the workload cares about (the request time at concurrency 1,
aggregate tok/s above it) in every round, the default deployment is chosen instead, and the lock says
so. Otherwise the llama-bench comparison's choice stands and the load test reports it.
"""

from __future__ import annotations

from haqa import ui
from haqa.config.schema import Recipe
from haqa.measure import load
from haqa.measure.compare import Contender


def deciding_metric(recipe: Recipe) -> str:
    return "request_s" if recipe.workload.concurrency == 1 else "aggregate_tps"


def load_test_of(runner, toolchain, recipe: Recipe, tuned: Contender, default: Contender | None, *,
                 prompt_text: str) -> tuple[dict, bool]:
    """The load test's record for the comparison, and whether the default deployment should win."""
    w, s = recipe.workload, recipe.search
    record: dict = {"method": load.METHOD, "rounds": s.load_rounds, "requests_per_client": s.load_requests,
                    "concurrency": w.concurrency, "contenders": {}, "ratios": {}}
    if default is None or default.model is None:
        why = default.skipped if default is not None and default.skipped else "the default deployment was not measured"
        record.update(decided=f"the load test only measured the tuned configuration ({why})")
        contenders = [_contender("tuned", tuned)]
    elif (default.quant, default.config) == (tuned.quant, tuned.config):
        record.update(decided="the tuned configuration is the default deployment: nothing to compare")
        contenders = [_contender("tuned", tuned)]
    else:
        record.update(decided="the llama-bench comparison chose; the load test reports")
        contenders = [_contender("tuned", tuned), _contender("default", default)]
    ui.step(f"load test of the bundle's llama-server: {len(contenders)} deployment(s), {s.load_rounds} interleaved "
            f"round(s), {w.concurrency} client(s) x {s.load_requests} request(s) of {w.prompt_tokens}+{w.gen_tokens} "
            "tokens")
    sides = load.load_test(runner, toolchain.bin("llama-server"), contenders, w, rounds=s.load_rounds,
                           requests_per_client=s.load_requests, prompt_text=prompt_text,
                           log_dir=runner.local_dir("logs"))
    for side in sides:
        record["contenders"][side.contender.label] = side.summary()
    if len(sides) < 2:
        return record, False
    ratios = load.ratios(sides[0], sides[1])
    record["ratios"]["tuned/default"] = ratios or "not measured"
    if not ratios:
        return record, False
    metric = deciding_metric(recipe)
    r = ratios[metric]
    what = "request time" if metric == "request_s" else "aggregate tok/s"
    ui.note(f"load test, tuned / default: {what} x{r['median']:.2f} (range {r['min']:.2f}-{r['max']:.2f}, "
            f"{r['rounds']} rounds; above 1 is better for tuned)")
    slower = r["max"] < 1.0
    if slower:
        record["decided"] = (f"the load test found the tuned configuration slower than the default deployment on "
                             f"{what} in every round (x{r['median']:.2f}): the default deployment is chosen")
    return record, slower


def _contender(label: str, c: Contender) -> load.LoadContender:
    return load.LoadContender(label, c.quant, c.model, c.config.server_args(), c.description)
