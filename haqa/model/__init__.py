"""Models: where a recipe's GGUF comes from, and the facts a GGUF file states about itself."""
