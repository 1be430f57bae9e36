"""Resolve ``package.module:attr`` import targets named in a config."""

from __future__ import annotations

import importlib
import sys
import traceback
from pathlib import Path
from typing import Any

from kit.errors import TargetError, first_line

__all__ = ["resolve_target"]


def _evict_foreign(module_name: str, base_dir: Path) -> None:
    """Drop a cached module of the same name that came from another config's folder.

    Two example folders may both have a ``model.py``; without this the second config
    would silently get the first folder's module.
    """
    top = module_name.split(".")[0]
    local = base_dir / top
    if not (local.with_suffix(".py").is_file() or local.is_dir()):
        return
    cached = sys.modules.get(top)
    origin = getattr(cached, "__file__", None)
    if cached is None or (origin and Path(origin).resolve().is_relative_to(base_dir.resolve())):
        return
    for name in [n for n in sys.modules if n == top or n.startswith(top + ".")]:
        del sys.modules[name]


def _origin(exc: BaseException) -> str:
    """`` at FILE:LINE`` of the innermost frame outside Python's import machinery."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if "importlib" not in f.filename]
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" at {exc.filename}:{exc.lineno}"
    return f" at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def resolve_target(target: str, *, key: str, base_dir: Path | None = None) -> Any:
    """Import ``target`` (searching ``base_dir`` first) and return the named attribute."""
    module_name, _, attr = target.partition(":")
    if base_dir is not None:
        folder = str(base_dir)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        _evict_foreign(module_name, base_dir)
    try:
        obj: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (module_name == exc.name or module_name.startswith(f"{exc.name}.")):
            detail = first_line(exc, typed=True)
            raise TargetError(f"importing {module_name!r} failed{_origin(exc)}: {detail}", key=key,
                              hint="install what it imports, or fix the import") from exc
        where = f" (searched {base_dir} and the installed packages)" if base_dir else ""
        raise TargetError(
            f"cannot import {module_name!r}{where}: {exc}",
            key=key,
            hint="check the module path before the colon",
        ) from None
    except Exception as exc:  # the module itself raised while importing: name where
        raise TargetError(f"importing {module_name!r} raised {first_line(exc, typed=True)}{_origin(exc)}",
                          key=key, hint="fix the module; `kit --debug` shows the traceback") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(
                f"module {module_name!r} has no attribute {attr!r}",
                key=key,
                hint="check the name after the colon",
            ) from None
    return obj
