"""The deployable bundle: GGUF, lock manifest, launch script; written atomically."""

from haqa.bundle.writer import write_bundle

__all__ = ["write_bundle"]
