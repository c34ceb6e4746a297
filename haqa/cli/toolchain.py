"""`haqa toolchain build|show`: the llama.cpp tools for a target, built once per (source, flags)."""

import json

import click

from haqa.config import load_target


@click.group(help="The llama.cpp toolchain built for a target.")
def toolchain() -> None:
    pass


@toolchain.command("build")
@click.option("--target", "-t", "target_name", default="local", show_default=True, help="target name or .toml path")
@click.option("--jobs", "-j", type=click.IntRange(1), default=None, help="parallel compile jobs (default: all cores)")
def build(target_name: str, jobs: int | None) -> None:
    """Build llama-bench, llama-quantize, llama-perplexity and llama-server (a cache hit if built before)."""
    from haqa.runner import runner_for
    from haqa.toolchain import ensure_toolchain

    target = load_target(target_name)
    tc = ensure_toolchain(runner_for(target), target, jobs=jobs)
    click.echo(f"{'cached' if tc.cached else 'built'}: {tc.root} (llama.cpp {tc.commit[:8]}, key {tc.key})")


@toolchain.command("show")
@click.option("--target", "-t", "target_name", default="local", show_default=True)
def show(target_name: str) -> None:
    """Print where the target's toolchain lives and the CMake options it is built with."""
    from haqa.runner import runner_for
    from haqa.toolchain.build import MARKER, cmake_options, toolchain_key
    from haqa.toolchain.source import llama_cpp_source

    target = load_target(target_name)
    source = llama_cpp_source()
    options = cmake_options(target, source)
    key = toolchain_key(source, options)
    root = runner_for(target).dir("toolchains", key)
    click.echo(json.dumps({"key": key, "root": str(root), "built": (root / MARKER).exists(),
                           "llama_cpp_commit": source.commit, "cmake_options": options}, indent=2))
