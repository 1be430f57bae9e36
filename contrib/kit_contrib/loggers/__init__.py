"""Loggers: hook plugins selected by name under ``loggers:`` in the config."""

__all__: list[str] = []
