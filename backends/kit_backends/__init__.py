"""kit's own backends; they register through entry points like any third-party backend."""

__all__: list[str] = []
