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
    """List the names of the models that ship with medkern.

    Returns
    -------
    list of str
        The names, sorted; each one loads with :func:`load`.

    See Also
    --------
    load : Load a shipped model.
    path : The ONNX file of a shipped model.

    Examples
    --------
    >>> names = mk.models.available()
    >>> "sarcoma-ct" in names, "brain-lesion" in names
    (True, True)
    """
    return sorted(p.stem for p in _HERE.glob("*.onnx"))


def path(name: str) -> Path:
    """Return the ONNX file of a shipped model.

    Parameters
    ----------
    name : str
        One of :func:`available`.

    Returns
    -------
    pathlib.Path
        The model file inside the installed package.

    Raises
    ------
    ValueError
        No shipped model has that name; the message lists the available ones.

    See Also
    --------
    available : The names of the shipped models.
    load : Load a shipped model.

    Examples
    --------
    >>> mk.models.path("sarcoma-ct").name
    'sarcoma-ct.onnx'
    """
    p = _HERE / f"{name}.onnx"
    if not p.is_file():
        raise ValueError(f"no shipped model named {name!r}; available: {available()}")
    return p


def load(name: str, **kwargs: Any):
    """Load a shipped model as a :class:`medkern.Model`, offline.

    The shipped models are trained by the scripts in the repository's ``models/`` folder (each
    with its model card there). Intended use: research and decision support only.

    Parameters
    ----------
    name : str
        One of :func:`available`.
    **kwargs
        Passed to :class:`~medkern.Model` (``providers``, ``threads``, ``precision``).

    Returns
    -------
    Model
        The model, with its preprocessing recipe read from its metadata.

    Raises
    ------
    ValueError
        No shipped model has that name.

    See Also
    --------
    medkern.Model : Load any exported ONNX model with medkern metadata.
    medkern.analyze : Chooses a shipped model for a study.

    Examples
    --------
    >>> mk.models.load("brain-lesion", threads=1)
    Model('brain-lesion', segmentation, providers=['CPUExecutionProvider'])
    """
    from medkern.inference import Model

    return Model(path(name), **kwargs)
