#!/usr/bin/env bash
# Packs into .gpu/ what scripts/gpu-run.sh needs on a GPU machine that can reach no network:
#   .gpu/whl/                              wheels of haqa's imports that such a machine's image lacks
#                                          (CPython $GPU_PY, manylinux x86_64), at the versions installed here
#   .gpu/llama_cpp_python-0.3.36.tar.gz    the llama-cpp-python sdist trimmed to the llama.cpp tree the
#                                          tools are built from (same layout and commit file, ~1/4 of the size)
# .gpu/ is ignored by git; pass it to the machine as a carried path. Run from the repository root,
# after `make prepare` (which downloads the sdist into haqa's cache).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
GPU_PY=${GPU_PY:-3.12}
# The image has numpy, PyYAML, click, rich, matplotlib and tqdm; these it lacks (KINDS.md's package list).
NEED=(pydantic pydantic_core annotated_types typing_inspection typing_extensions gguf)

rm -rf .gpu && mkdir -p .gpu/whl
pins=()
for n in "${NEED[@]}"; do
  pins+=("$n==$("$PY" -c 'import sys; from importlib import metadata; print(metadata.version(sys.argv[1]))' "$n")")
done
plats=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do plats+=(--platform "$p"); done
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$GPU_PY" --implementation cp "${plats[@]}" \
  -d .gpu/whl "${pins[@]}"

"$PY" - <<'EOF'
import tarfile
from haqa.toolchain import source

sdist = source.llama_cpp_source()
keep = {source._COMMIT_FILE}
out = f".gpu/{source._ROOT}.tar.gz"
with tarfile.open(sdist.sdist) as src, tarfile.open(out, "w:gz", compresslevel=9) as dst:
    for m in src.getmembers():
        rel = m.name[len(source._VENDOR):] if m.name.startswith(source._VENDOR) else None
        wanted = m.name in keep or (rel and rel.split("/", 1)[0] not in source._NOT_NEEDED)
        if wanted:
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
print(f"{out}: llama.cpp {sdist.commit[:8]}")
EOF
du -sh .gpu/whl .gpu/*.tar.gz
