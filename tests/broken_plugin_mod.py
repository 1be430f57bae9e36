"""Importing this module fails, like a plugin with a missing dependency."""

import kit_dependency_that_does_not_exist  # noqa: F401
