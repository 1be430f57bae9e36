"""kit's own loggers, formats and plugins, built on kit's public API only."""

__all__: list[str] = []
