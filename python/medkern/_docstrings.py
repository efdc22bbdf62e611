"""Parameter descriptions that recur across the public API, written once.

A docstring names a shared entry with a placeholder alone on its line, e.g.::

    @fill_doc
    def gaussian(img, sigma_mm, *, backend="auto"):
        '''Gaussian smoothing.

        Parameters
        ----------
        %(img)s
        sigma_mm : float or sequence of float
            Standard deviation in mm, array-axis order.
        %(backend)s
        '''

:func:`fill_doc` replaces each placeholder with the entry from :data:`DOCS`, every line of the
entry indented like the placeholder, so the result is plain numpydoc that Sphinx, ``help()`` and
``numpydoc.validate`` read as if it had been typed out. The idea is scipy.ndimage's
``docfiller``; only whole-line placeholders are filled, so a literal ``%`` elsewhere in a docstring
needs no escaping. An unknown placeholder is a KeyError at import time, not a hole in the docs.
"""

from __future__ import annotations

import re
from typing import TypeVar

__all__ = ["DOCS", "fill_doc"]

T = TypeVar("T")

# Each entry is a numpydoc parameter block: "name : type" then its description indented by 4.
DOCS: dict[str, str] = {
    "img": """\
img : Image or array_like
    A 2D or 3D scalar image: an :class:`~medkern.Image`, or a bare numpy or cupy array (taken
    to have unit spacing at the origin). An Image in gives an Image out with the same
    geometry; an array in gives an array out, on the device it came from.""",
    "img_geometry": """\
img : Image or array_like
    A 2D or 3D image. Its geometry (spacing, origin, direction) is used when it is an
    :class:`~medkern.Image`; a bare numpy or cupy array is taken to have unit spacing at the
    origin and the default direction.""",
    "mask": """\
mask : Image or array_like of bool, optional
    Voxels to use, same shape as ``img`` (nonzero = inside). ``None`` (default) uses every
    voxel. An Image is accepted; only its array is read.""",
    "binary_mask": """\
mask : Image or array_like
    A 2D or 3D mask: every nonzero voxel is set (bool or numeric; NaN and +-inf are refused).
    Physical sizes come from the Image's spacing, 1 mm per voxel for a bare array. An Image in
    gives an Image out with the same geometry; an array in gives an array out.""",
    "spacing": """\
spacing : float or sequence of float
    Voxel size in mm, one value per array axis in array-axis order (``[k, j, i]`` for 3D), or one
    value for every axis.""",
    "interpolation": """\
interpolation : {"linear", "nearest", "cubic", "label"}, optional
    How values between voxel centres are computed. ``"linear"`` (default) is (bi/tri)linear
    with the edge value extended over the outer half voxel; ``"nearest"`` rounds half up and
    keeps the dtype; ``"cubic"`` is the interpolating cubic B-spline (scipy ``order=3,
    mode="mirror"``); ``"label"`` is for segmentations: each output voxel takes the label with
    the largest summed linear weight, so every output value is an input label and thin
    structures survive. ``"nearest"`` and ``"label"`` keep the input dtype (``"label"`` needs
    integers or bool); ``"linear"`` and ``"cubic"`` give float64 for float64 input and float32
    otherwise.""",
    "fill": """\
fill : float, optional
    Value of output voxels whose centre maps outside the input's physical extent (default 0).
    For ``"nearest"`` and ``"label"`` it must fit the input dtype.""",
    "backend": """\
backend : {"auto", "cpp", "numba", "cuda", "cupy"}, optional
    Which implementation runs. ``"auto"`` (default) picks by where the input lives: a numpy
    array runs the C++/OpenMP kernels (Numba when the compiled extension is missing), a cupy
    array runs CUDA (CuPy when ``medkern._cuda`` is missing). The output lives where the input
    lived. :func:`medkern.backends` says which backends are available and why not.""",
    "progress": """\
progress : bool or callable, optional
    Progress reporting and cancellation. ``None`` or ``False`` (default): nothing is
    reported; ``True``: a tqdm bar on stderr; a callable ``progress(stage, fraction)`` is
    called with a stage name and the fraction done in [0, 1] (never decreasing, exactly 1.0
    once at the end, at most about a hundred calls a second). When it returns ``False`` the
    operation stops and raises :class:`~medkern.Cancelled`, leaving nothing behind.""",
    "threads": """\
The CPU kernels use :func:`~medkern.get_num_threads` threads; 1 and N threads give identical
results.""",
    "path_in": """\
path : str or os.PathLike
    The file to read.""",
    "path_out": """\
path : str or os.PathLike
    The file to write. It is written atomically (a temporary file, then a rename), so a
    reader never sees half a file and a failed write leaves the target untouched.""",
    "volume": """\
volume : int, optional
    For a 4D file, the index of the volume to read (a 3D image comes back). ``None``
    (default) reads a 3D file; a 4D file then needs ``volume``.""",
}

_PLACEHOLDER = re.compile(r"^(?P<indent>[ \t]*)%\((?P<key>\w+)\)s[ \t]*$", re.MULTILINE)


def _indented(text: str, indent: str) -> str:
    return "\n".join(indent + line if line else line for line in text.splitlines())


def fill_docstring(doc: str, entries: dict[str, str] | None = None) -> str:
    """Replace each whole-line ``%(key)s`` placeholder of ``doc`` with its entry.

    Parameters
    ----------
    doc : str
        A docstring.
    entries : dict of str to str, optional
        The entries to fill from; default :data:`DOCS`.

    Returns
    -------
    str
        ``doc`` with every placeholder replaced, each line of an entry indented like its
        placeholder.

    Raises
    ------
    KeyError
        A placeholder names no entry.

    Examples
    --------
    >>> print(fill_docstring("Parameters\\n    ----------\\n    %(fill)s").splitlines()[2])
        fill : float, optional
    """
    table = DOCS if entries is None else entries

    def replace(match: re.Match[str]) -> str:
        key = match.group("key")
        if key not in table:
            raise KeyError(f"docstring placeholder %({key})s names no shared entry; known: {sorted(table)}")
        return _indented(table[key], match.group("indent"))

    return _PLACEHOLDER.sub(replace, doc)


def fill_doc(obj: T) -> T:
    """Decorator: fill the shared-parameter placeholders of a function's or class's docstring.

    Parameters
    ----------
    obj : function or class
        Its ``__doc__`` is filled in place (a no-op under ``python -OO``, which drops docstrings).

    Returns
    -------
    function or class
        ``obj`` itself.

    Examples
    --------
    >>> @fill_doc
    ... def f(img):
    ...     '''Nothing.
    ...
    ...     Parameters
    ...     ----------
    ...     %(img)s
    ...     '''
    >>> f.__doc__.splitlines()[4].strip()
    'img : Image or array_like'
    """
    doc = getattr(obj, "__doc__", None)
    if doc:
        obj.__doc__ = fill_docstring(doc)
    return obj

