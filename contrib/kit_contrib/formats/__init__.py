"""Checkpoint formats beyond kit's default ``torch``: ``safetensors`` and ``lightning``."""

__all__: list[str] = []
