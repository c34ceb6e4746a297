"""Target and recipe files: typed schemas, loading with `extends`, and errors that name file and key."""

from haqa.config.loader import find_file, fingerprint, list_names, load_recipe, load_target
from haqa.config.schema import Recipe, Target

__all__ = ["Recipe", "Target", "find_file", "fingerprint", "list_names", "load_recipe", "load_target"]
