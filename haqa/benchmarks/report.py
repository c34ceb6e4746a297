"""Markdown sections for docs/BENCHMARKS.md: every table with the command, machine, date and llama.cpp commit."""

from __future__ import annotations

import datetime as dt
import platform

from haqa.config import load_target


def machine_line() -> str:
    hw = load_target("local").hardware
    return (f"{hw.cpu_model or platform.processor()} ({hw.arch}), {hw.cores} cores, {hw.ram_gib:g} GiB RAM, "
            f"{platform.system()} {platform.release()}")


def section(title: str, command: str, body: str) -> str:
    from haqa.toolchain.source import llama_cpp_source

    commit = llama_cpp_source().commit[:8]
    return (f"## {title}\n\n"
            f"Command: `{command}`  \n"
            f"Machine: {machine_line()}  \n"
            f"Date: {dt.date.today().isoformat()}; llama.cpp {commit}\n\n{body}\n")
