"""The bundle checked before anything is shipped, and against the device it is shipped to.

Here (haqa/bundle/verify.py holds the sums and the signature, haqa/bundle/lock/ the lock): no symbolic
link in the bundle, every file against SHA256SUMS, SHA256SUMS against its signature when
--allowed-signers is given, the lock's fields (every name a schema name) and the files ship needs.
On the device: refused when the bundle cannot run there (another OS or CPU architecture, a CPU without
the features the native build uses, no GPU of the kind it was built for, or too little RAM for the
lock's predicted peak plus the target's headroom).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from haqa import ui
from haqa.bundle.lock import LOCK_NAME, REDEPLOY, Lock, load
from haqa.bundle.verify import SIGNATURE, SUMS, verify_sums
from haqa.errors import UserError


@dataclass(frozen=True)
class Bundle:
    root: Path
    files: dict[str, str]  # name -> sha256, every file SHA256SUMS lists
    lock: Lock  # haqa.lock.json, checked (haqa/bundle/lock/)
    model_file: str
    signed_by: str | None = None  # the principal whose key signed SHA256SUMS, when that was checked

    @property
    def recipe(self) -> str:
        return self.lock.recipe.name

    @property
    def label(self) -> str:
        """<recipe>@<target it was made for>: the install folder's name."""
        return self.lock.label


def verify_bundle(path: Path, allowed_signers: Path | None = None) -> Bundle:
    """The bundle at `path` once it passed haqa/bundle/verify.py (no symbolic link in it, every file
    against SHA256SUMS, and the signature of SHA256SUMS when `allowed_signers` is given) and its lock
    passed haqa/bundle/lock/ (every name it holds a schema name)."""
    root = Path(path)
    checked = verify_sums(root, allowed_signers)
    files = checked.files
    if LOCK_NAME not in files:
        raise UserError(f"{SUMS} in {root} does not list {LOCK_NAME}", hint=REDEPLOY)
    lock = load(root / LOCK_NAME)
    for name, digest in lock.files.items():
        if files.get(name) != digest:
            raise UserError(f"{LOCK_NAME} and {SUMS} disagree about {name}", hint=REDEPLOY)
    model_file = f"{lock.recipe.name}-{lock.model.file_type}.gguf"
    for needed in (model_file, "run.sh", "bin/llama-server"):
        if needed not in files:
            raise UserError(f"{SUMS} in {root} does not list {needed}", hint=REDEPLOY)
    if unlisted := sorted(checked.present - set(files) - {SUMS, SIGNATURE}):
        ui.note(f"not listed in {SUMS}, so not shipped: {', '.join(unlisted)}")
    if checked.signed_by is None and SIGNATURE in checked.present:
        ui.note(f"{SIGNATURE} was not checked: pass --allowed-signers FILE to verify who signed the bundle")
    return Bundle(root=root, files=files, lock=lock, model_file=model_file, signed_by=checked.signed_by)


def device_problems(bundle: Bundle, facts: dict, headroom_gib: float) -> list[str]:
    """Why the bundle cannot run on a device with these probed facts (empty: it can)."""
    built = bundle.lock.target.facts
    hw = built.hardware
    # llama.cpp builds natively (GGML_NATIVE) unless told otherwise: the server uses every feature of the
    # CPU it was built on, and stops at the first instruction a CPU without one cannot run.
    native = bundle.lock.llama_cpp.cmake_options.get("GGML_NATIVE", "ON") != "OFF"
    problems = []
    if facts.get("os") != built.os:
        problems.append(f"the bundle is for {built.os}, the device runs {facts.get('os') or 'an unknown OS'}")
    if facts.get("arch") != hw.arch:
        problems.append(f"the bundled llama-server is a native {hw.arch} program, the device's CPU is "
                        f"{facts.get('arch') or 'unknown'}")
    elif native and hw.cpu_features:
        if "cpu_features" not in facts:
            problems.append("the device's CPU features could not be read (/proc/cpuinfo or sysctl), so it is "
                            "unknown whether it runs the natively built llama-server")
        elif missing := sorted(set(hw.cpu_features) - set(facts["cpu_features"])):
            problems.append(f"the bundled llama-server was built for the CPU it was measured on (GGML_NATIVE), "
                            f"which has {', '.join(missing)}; the device's CPU does not")
    if hw.gpu.kind == "cuda" and (facts.get("gpu") or {}).get("kind") != "cuda":
        problems.append("the bundled llama-server was built with CUDA; the device has no NVIDIA GPU "
                        "(nvidia-smi and /etc/nv_tegra_release found none)")
    return problems + _memory_problems(bundle, facts, headroom_gib)


def _memory_problems(bundle: Bundle, facts: dict, headroom_gib: float) -> list[str]:
    predicted = bundle.lock.metrics.memory.deployment_predicted
    need = float(predicted.host_bytes)
    ram = facts.get("ram_gib")
    problems = []
    if not ram:
        problems.append("the device's RAM could not be read (/proc/meminfo or sysctl hw.memsize), so the "
                        "bundle's fit cannot be checked")
    elif need + headroom_gib * 2**30 > ram * 2**30:
        problems.append(f"the memory model predicts a peak of {need / 2**30:.2f} GiB in RAM (context "
                        f"{bundle.lock.runtime.ctx_size}); with the target's {headroom_gib:g} GiB headroom that needs "
                        f"{need / 2**30 + headroom_gib:.2f} GiB, and the device has {ram:g} GiB")
    gpu_need = float(predicted.gpu_bytes)
    gpu_mem = (facts.get("gpu") or {}).get("memory_gib")
    if gpu_need and gpu_mem and gpu_need > gpu_mem * 2**30:
        problems.append(f"the memory model predicts {gpu_need / 2**30:.2f} GiB on the GPU, which has {gpu_mem:g} GiB")
    return problems
