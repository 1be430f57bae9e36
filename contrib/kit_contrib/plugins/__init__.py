"""kit's built-in hook plugins: opt-in (``autoload = False``), each active only when a
config's ``plugins:`` lists it (or ``kit -p NAME``)."""
