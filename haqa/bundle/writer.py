"""Write dist/<recipe>@<target>/ atomically: build it in a temporary folder beside it, then swap it in.

A failed or interrupted write leaves no half-written bundle, and the previous good one stays.
"""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from haqa.bundle import run_script, services
from haqa.hashing import sha256_file
from haqa.runtime import RuntimeConfig
from haqa.secrets import redact_bytes, redact_obj

LOCK_NAME = "haqa.lock.json"


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # GGUFs in the cache are never modified, so a hard link is safe and instant
    except OSError:
        shutil.copy2(src, dst)


def write_bundle(out_dir: Path, *, model: Path, model_name: str, server_binary: Path, lock: dict,
                 server_args: list[str], label: str, alias: str, config: RuntimeConfig | None = None,
                 recipe: str | None = None, documents: dict[str, bytes] | None = None) -> Path:
    """The bundle folder, plus `<folder>.tar.gz` beside it. Every file is listed in SHA256SUMS.

    `documents` are extra files by name (REPORT.md, pareto.png)."""
    # No secret in the lock, the documents or the tarball, whatever text produced them (haqa/secrets.py).
    lock = redact_obj(lock)
    documents = {name: redact_bytes(data) for name, data in (documents or {}).items()}
    out_dir = out_dir.resolve()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        _link_or_copy(model, tmp / model_name)
        (tmp / "bin").mkdir()
        shutil.copy2(server_binary, tmp / "bin" / "llama-server")
        script = tmp / "run.sh"
        script.write_text(run_script.render(label, model_name, alias, server_args))
        script.chmod(0o755)
        names = [model_name, "bin/llama-server", "run.sh"]
        if config is not None:
            name = recipe or alias
            (tmp / "Modelfile").write_text(services.modelfile(model_name, config, label))
            (tmp / f"{services.service_name(name)}.service").write_text(services.systemd_unit(name, label))
            (tmp / f"dev.haqa.{name}.plist").write_bytes(services.launchd_plist(name, label))
            names += ["Modelfile", f"{services.service_name(name)}.service", f"dev.haqa.{name}.plist"]
        for name, data in (documents or {}).items():
            (tmp / name).write_bytes(data)
            names.append(name)
        lock = {**lock, "files": {name: sha256_file(tmp / name) for name in names}}
        (tmp / LOCK_NAME).write_text(json.dumps(lock, indent=2, sort_keys=False) + "\n")
        sums = sorted(names + [LOCK_NAME])
        (tmp / "SHA256SUMS").write_text("".join(f"{sha256_file(tmp / n)}  {n}\n" for n in sums))
        for p in tmp.rglob("*"):
            if p.is_file() and p.name not in ("run.sh", "llama-server"):
                p.chmod(0o644)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old.", dir=out_dir.parent))
            os.replace(out_dir, old / "b")
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _tarball(out_dir)
    return out_dir


def _tarball(folder: Path) -> Path:
    """`<folder>.tar.gz` beside the folder, written atomically."""
    out = folder.with_name(folder.name + ".tar.gz")
    part = folder.with_name(f".{folder.name}.tar.gz.part")
    with tarfile.open(part, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=folder.name)
    os.replace(part, out)
    return out
