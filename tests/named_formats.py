"""Checkpoint formats whose class ``name`` is empty or disagrees with their entry point."""

from __future__ import annotations

from typing import ClassVar

from kit.torchfile import TorchFormat


class UnnamedFormat(TorchFormat):
    """kit's torch format, leaving ``name`` empty: kit knows it by the name it was chosen by."""

    name: ClassVar[str] = ""


class MisnamedFormat(TorchFormat):
    """Says one name while its entry point says another."""

    name: ClassVar[str] = "other"
