"""Parsers of what devices and llama.cpp tools print: /proc files, nvidia-smi, llama-bench JSON."""

from __future__ import annotations

import json

import pytest

from haqa.measure.bench import parse_bench_json
from haqa.probe import parse_cpuinfo, parse_meminfo, parse_nvidia_smi
from tests.support.files import REPO

X86_CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx_vnni

processor\t: 1
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
physical id\t: 0
core id\t: 0
flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx_vnni

processor\t: 2
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
physical id\t: 0
core id\t: 1
flags\t\t: fpu sse4_2 avx avx2 fma f16c bmi2 avx_vnni
"""

# Raspberry Pi 5 (Cortex-A76): no "physical id", so cores are counted from "processor" entries.
PI5_CPUINFO = "".join(
    f"processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
    f"fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp\nCPU implementer\t: 0x41\nCPU part\t: 0xd0b\n\n"
    for i in range(4)
) + "Model\t\t: Raspberry Pi 5 Model B Rev 1.0\n"


def test_x86_cpuinfo_counts_physical_cores_and_features():
    info = parse_cpuinfo(X86_CPUINFO)
    assert info["cores"] == 2  # two hyperthreads share core 0
    assert info["cpu_model"].startswith("12th Gen Intel")
    assert info["cpu_features"] == sorted(["sse4_2", "avx", "avx2", "fma", "f16c", "bmi2", "avx_vnni"])


def test_arm_cpuinfo_maps_features_to_llama_cpp_names():
    info = parse_cpuinfo(PI5_CPUINFO)
    assert info["cores"] == 4
    assert info["cpu_features"] == ["dotprod", "fp16", "neon"]
    assert info["cpu_model"] == "Raspberry Pi 5 Model B Rev 1.0"


def test_meminfo():
    assert parse_meminfo("MemTotal:        8053636 kB\nMemFree: 1 kB\n") == pytest.approx(7.68, abs=0.01)
    assert parse_meminfo("nothing here") is None


def test_nvidia_smi():
    gpu = parse_nvidia_smi("NVIDIA H100 80GB HBM3, 81559, 9.0\n")
    assert gpu == {"kind": "cuda", "name": "NVIDIA H100 80GB HBM3", "memory_gib": 79.65, "cuda_arch": "90"}
    assert parse_nvidia_smi("NVIDIA-SMI has failed\n") is None


def test_llama_bench_json_from_the_pinned_build():
    """A real `llama-bench -o json` output of the pinned llama.cpp (load_mode/lazy_mode schema)."""
    records = parse_bench_json((REPO / "tests" / "data" / "llama-bench-0c1e5709.json").read_text())
    pp = next(r for r in records if r["n_gen"] == 0)
    tg = next(r for r in records if r["n_prompt"] == 0)
    assert pp["n_prompt"] == 16 and tg["n_gen"] == 8
    assert len(tg["samples_ts"]) == 2 and tg["avg_ts"] > 0
    assert pp["load_mode"] == "auto"


def test_llama_bench_json_older_schema_with_log_noise():
    """Older builds emit use_mmap instead of load_mode; stray text before the array is skipped."""
    old = [{"build_commit": "3f1ae2e3", "n_prompt": 512, "n_gen": 0, "use_mmap": True, "avg_ts": 100.0,
            "stddev_ts": 1.0}]
    records = parse_bench_json("load_backend: loaded CPU\n" + json.dumps(old))
    assert records[0]["use_mmap"] is True


@pytest.mark.parametrize("text,why", [
    ("no json", "no JSON array"),
    ('[{"n_prompt": 1}]', "lacks"),
    ('{"a": 1}', "no JSON array"),
])
def test_llama_bench_json_rejects_garbage(text, why):
    with pytest.raises(ValueError, match=why):
        parse_bench_json(text)
