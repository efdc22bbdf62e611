"""Models that ship with medkern (ONNX with medkern metadata; cards in the repository's models/).

    model = mk.models.load("sarcoma-ct")
    mk.models.available()   # names of the shipped models

They are trained by the scripts in the repository's ``models/`` folder and load offline.
Intended use: research and decision support only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["available", "path", "load"]

_HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the shipped models."""
    return sorted(p.stem for p in _HERE.glob("*.onnx"))


def path(name: str) -> Path:
    """The ONNX file of a shipped model."""
    p = _HERE / f"{name}.onnx"
    if not p.is_file():
        raise ValueError(f"no shipped model named {name!r}; available: {available()}")
    return p


def load(name: str, **kwargs: Any):
    """A :class:`medkern.Model` for a shipped model (keyword arguments go to ``Model``)."""
    from medkern.inference import Model

    return Model(path(name), **kwargs)
