"""Spatial transforms in LPS world millimetres (ITK convention).

A transform maps a point of the OUTPUT (reference, fixed) space to the point of the INPUT
(moving) space where the image is sampled, exactly like an ITK/SimpleITK transform given to
``Resample``: ``mk.warp(moving, t, reference=fixed)`` samples ``moving`` at ``t.apply(p)`` for
every voxel centre ``p`` of ``fixed``.

* :class:`Affine` — a ``(ndim+1) x (ndim+1)`` homogeneous matrix ``p -> A p + b``.
* :class:`DisplacementField` — ``p -> p + u(p)`` with ``u`` a world-mm vector image, linearly
  interpolated and zero outside its grid (ITK ``DisplacementFieldTransform``).
* :class:`Composite` — what ``@`` gives when a displacement field is involved.

Composition reads like matrix products: ``(a @ b).apply(p) == a.apply(b.apply(p))``.
"""

from __future__ import annotations

import math
import os
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
from numpy.typing import ArrayLike

from medkern._dispatch import is_cupy_array
from medkern._sampling import map_coordinates
from medkern.image import Image

if TYPE_CHECKING:
    import SimpleITK as sitk

__all__ = ["Transform", "Affine", "DisplacementField", "Composite"]


class Transform:
    """Base of every transform: ``apply``, ``inverse`` and ``@`` composition."""

    ndim: int

    def apply(self, points: ArrayLike) -> np.ndarray:
        raise NotImplementedError

    def inverse(self) -> "Transform":
        raise NotImplementedError

    def __matmul__(self, other: "Transform") -> "Transform":
        if not isinstance(other, Transform):
            return NotImplemented
        if other.ndim != self.ndim:
            raise ValueError(f"cannot compose a {self.ndim}D transform with a {other.ndim}D one")
        return Composite([self, other])

    def _points(self, points: ArrayLike) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape[-1:] != (self.ndim,):
            raise ValueError(f"points must have a trailing axis of length {self.ndim} (LPS x, y[, z]), "
                             f"got shape {pts.shape}")
        return pts


class Affine(Transform):
    """World-to-world affine map ``p -> A p + b`` (output point to input point), LPS mm.

    A transform maps a point of the output (reference, fixed) space to the point of the input
    (moving) space where the image is sampled, exactly like an ITK/SimpleITK transform given to
    ``Resample``. Composition reads like matrix products: ``(a @ b).apply(p) ==
    a.apply(b.apply(p))``; composing with a displacement field gives a composite transform.
    ``Affine.from_sitk`` / ``to_sitk`` convert SimpleITK transforms, ``Affine.read`` / ``write``
    handle ITK ``.txt``/``.tfm`` and ITK/ANTs ``.mat`` files (ITK and LPS are the same space, so
    no axis flips are involved). Equality (``==``) is by value.

    Parameters
    ----------
    matrix : array_like
        ``(ndim+1) x (ndim+1)`` homogeneous matrix (ndim 2 or 3) with last row ``[0, ..., 1]``
        and an invertible linear part.

    Raises
    ------
    ValueError
        The matrix has the wrong shape, is not finite, has a wrong last row, or is singular.

    See Also
    --------
    DisplacementField : A dense displacement transform.
    warp : Apply a transform to an image.
    register : Find a transform.

    Examples
    --------
    >>> shift = mk.Affine.from_parts(np.eye(2), translation=(1.0, 0.0))
    >>> shift
    Affine([[1., 0., 1.],
     [0., 1., 0.],
     [0., 0., 1.]])
    >>> shift.apply([[0.0, 0.0], [2.0, 3.0]])
    array([[1., 0.],
           [3., 3.]])
    >>> (shift @ shift).translation
    array([2., 0.])
    """

    __slots__ = ("_matrix",)

    def __init__(self, matrix: ArrayLike) -> None:
        m = np.array(matrix, dtype=np.float64, copy=True)
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] not in (3, 4):
            raise ValueError(f"Affine matrix must be 3x3 (2D) or 4x4 (3D) homogeneous, got shape {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("Affine matrix must be finite")
        n = m.shape[0] - 1
        if not np.allclose(m[n], np.eye(n + 1)[n], rtol=0, atol=1e-12):
            raise ValueError(f"Affine matrix last row must be {list(np.eye(n + 1)[n])}, got {list(m[n])}")
        with np.errstate(over="ignore", invalid="ignore"):
            det = np.linalg.det(m[:n, :n])
        if not np.isfinite(det):
            raise ValueError("Affine matrix: the determinant of its linear part overflows float64; scale it down")
        if abs(det) < 1e-12:
            raise ValueError("Affine matrix is singular: its linear part must be invertible")
        m.setflags(write=False)
        self._matrix = m

    # ------------------------------------------------------------------ construction
    @classmethod
    def identity(cls, ndim: int = 3) -> "Affine":
        """Make the identity transform.

        Parameters
        ----------
        ndim : {2, 3}, optional
            Dimension; default 3.

        Returns
        -------
        Affine
            ``p -> p``.

        Raises
        ------
        ValueError
            ``ndim`` is neither 2 nor 3.

        See Also
        --------
        from_parts, rotation

        Examples
        --------
        >>> mk.Affine.identity(2).matrix
        array([[1., 0., 0.],
               [0., 1., 0.],
               [0., 0., 1.]])
        """
        if ndim not in (2, 3):
            raise ValueError(f"ndim must be 2 or 3, got {ndim}")
        return cls(np.eye(ndim + 1))

    @classmethod
    def from_parts(cls, linear: ArrayLike, translation: ArrayLike | None = None,
                   center: ArrayLike | None = None) -> "Affine":
        """Make an affine from ITK's parameters: ``p -> L (p - c) + c + t``.

        Parameters
        ----------
        linear : array_like
            The 2x2 or 3x3 linear part ``L``.
        translation : array_like, optional
            ``t`` in mm; default zero.
        center : array_like, optional
            The centre of rotation ``c`` in LPS mm; default the origin.

        Returns
        -------
        Affine
            The transform.

        Raises
        ------
        ValueError
            Wrong shapes, or a singular ``linear``.

        See Also
        --------
        rotation : A rotation about a centre.

        Examples
        --------
        >>> scale = mk.Affine.from_parts(np.diag([2.0, 2.0]), center=(1.0, 1.0))
        >>> scale.apply([1.0, 1.0]), scale.apply([2.0, 1.0])
        (array([1., 1.]), array([3., 1.]))
        """
        lin = np.asarray(linear, dtype=np.float64)
        n = lin.shape[0]
        if lin.shape not in ((2, 2), (3, 3)):
            raise ValueError(f"linear part must be 2x2 or 3x3, got shape {lin.shape}")
        t = np.zeros(n) if translation is None else np.asarray(translation, dtype=np.float64)
        c = np.zeros(n) if center is None else np.asarray(center, dtype=np.float64)
        if t.shape != (n,) or c.shape != (n,):
            raise ValueError(f"translation and center need {n} values each")
        m = np.eye(n + 1)
        m[:n, :n] = lin
        m[:n, n] = t + c - lin @ c
        return cls(m)

    @classmethod
    def rotation(cls, angles_deg: float | Sequence[float], center: ArrayLike | None = None) -> "Affine":
        """Make a rotation about a centre.

        Parameters
        ----------
        angles_deg : float or sequence of float
            2D: one angle; 3D: angles about x, y, z in degrees, applied in ITK's order
            (Euler3DTransform with ComputeZYX off: ``R = Rz Rx Ry``).
        center : array_like, optional
            The centre of rotation in LPS mm; default the origin.

        Returns
        -------
        Affine
            The rotation.

        Raises
        ------
        ValueError
            Neither 1 nor 3 angles.

        See Also
        --------
        from_parts : Any linear part, translation and centre.

        Examples
        --------
        >>> mk.Affine.rotation(90, center=(1.0, 1.0)).apply([2.0, 1.0])
        array([1., 2.])
        >>> mk.Affine.rotation((0, 0, 90)).apply([1.0, 0.0, 0.0])
        array([0., 1., 0.])
        """
        a = np.deg2rad(np.atleast_1d(np.asarray(angles_deg, dtype=np.float64)))
        if a.size == 1:
            c, s = np.cos(a[0]), np.sin(a[0])
            return cls.from_parts([[c, -s], [s, c]], None, center)
        if a.size != 3:
            raise ValueError(f"angles_deg needs 1 (2D) or 3 (3D) values, got {a.size}")
        return cls.from_parts(_euler3d(*a), None, center)

    # ------------------------------------------------------------------ properties and algebra
    @property
    def matrix(self) -> np.ndarray:
        """The homogeneous matrix (read-only)."""
        return self._matrix

    @property
    def ndim(self) -> int:
        """Spatial dimension, 2 or 3."""
        return self._matrix.shape[0] - 1

    @property
    def linear(self) -> np.ndarray:
        """The linear part ``A`` (read-only view)."""
        return self._matrix[: self.ndim, : self.ndim]

    @property
    def translation(self) -> np.ndarray:
        """The translation ``b`` in mm (read-only view)."""
        return self._matrix[: self.ndim, self.ndim]

    def apply(self, points: ArrayLike) -> np.ndarray:
        """Map LPS points of the output space to the input space.

        Parameters
        ----------
        points : array_like
            LPS points in mm, shape ``(..., ndim)``.

        Returns
        -------
        numpy.ndarray
            The mapped points, same shape.

        Raises
        ------
        ValueError
            The trailing axis is not of length ``ndim``.

        See Also
        --------
        inverse

        Examples
        --------
        >>> shift = mk.Affine.from_parts(np.eye(2), translation=(1.0, 0.0))
        >>> shift.apply([2.0, 3.0])
        array([3., 3.])
        """
        pts = self._points(points)
        return pts @ self.linear.T + self.translation

    def inverse(self) -> "Affine":
        """Return the inverse transform.

        Returns
        -------
        Affine
            The map from input points back to output points.

        See Also
        --------
        apply

        Examples
        --------
        >>> shift = mk.Affine.from_parts(np.eye(2), translation=(1.0, 0.0))
        >>> shift.inverse().translation
        array([-1.,  0.])
        """
        return Affine(np.linalg.inv(self._matrix))

    def __matmul__(self, other: Transform) -> Transform:
        if isinstance(other, Affine):
            if other.ndim != self.ndim:
                raise ValueError(f"cannot compose a {self.ndim}D transform with a {other.ndim}D one")
            return Affine(self._matrix @ other._matrix)
        return super().__matmul__(other)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Affine) and np.array_equal(self._matrix, other._matrix)

    __hash__ = None  # mutable-looking value type: equality by value, no hashing

    def allclose(self, other: "Affine", atol: float = 1e-9) -> bool:
        """Tell whether two affines are equal within a tolerance.

        Parameters
        ----------
        other : Affine
            The transform to compare with (anything else compares unequal).
        atol : float, optional
            Absolute tolerance on every matrix element.

        Returns
        -------
        bool
            True when every element agrees within ``atol``.

        See Also
        --------
        inverse

        Examples
        --------
        >>> shift = mk.Affine.from_parts(np.eye(2), translation=(1.0, 0.0))
        >>> (shift @ shift.inverse()).allclose(mk.Affine.identity(2))
        True
        """
        return isinstance(other, Affine) and np.allclose(self._matrix, other._matrix, rtol=0, atol=atol)

    def __repr__(self) -> str:
        rows = np.array2string(self._matrix, precision=6, suppress_small=True, separator=", ")
        return f"Affine({rows})"

    # ------------------------------------------------------------------ SimpleITK
    @classmethod
    def from_sitk(cls, transform: sitk.Transform) -> "Affine":
        """Make an Affine from a SimpleITK matrix-offset transform.

        Parameters
        ----------
        transform : SimpleITK.Transform
            Affine, Euler, Similarity, Versor, Translation, Scale... or an identity or composite
            of them (ITK applies the last-added transform first, as here).

        Returns
        -------
        Affine
            The same mapping.

        Raises
        ------
        TypeError
            Not a SimpleITK transform, or not affine (use :meth:`DisplacementField.from_sitk`).
        ValueError
            Neither 2D nor 3D.

        See Also
        --------
        to_sitk : The inverse conversion.

        Examples
        --------
        >>> import SimpleITK as sitk
        >>> mk.Affine.from_sitk(sitk.TranslationTransform(2, (1.0, 0.0))).translation
        array([1., 0.])
        """
        import SimpleITK as sitk

        if not isinstance(transform, sitk.Transform):
            raise TypeError(f"transform must be a SimpleITK.Transform, got {type(transform).__name__}")
        n = transform.GetDimension()
        if n not in (2, 3):
            raise ValueError(f"only 2D and 3D transforms are supported, got {n}D")
        t = transform.Downcast() if hasattr(transform, "Downcast") else transform
        if isinstance(t, sitk.CompositeTransform):
            out = cls.identity(n)
            # ITK applies the last-added transform first: T(p) = T0(T1(...Tn(p))).
            for i in range(t.GetNumberOfTransforms()):
                out = out @ cls.from_sitk(t.GetNthTransform(i))
            return out
        if isinstance(t, sitk.TranslationTransform):
            return cls.from_parts(np.eye(n), t.GetOffset())
        if not (hasattr(t, "GetMatrix") and hasattr(t, "GetTranslation") and hasattr(t, "GetCenter")):
            if t.GetTransformEnum() == sitk.sitkIdentity:
                return cls.identity(n)
            raise TypeError(f"{t.GetName()} is not affine; use mk.DisplacementField.from_sitk for "
                            "displacement fields")
        return cls.from_parts(np.asarray(t.GetMatrix()).reshape(n, n), t.GetTranslation(), t.GetCenter())

    def to_sitk(self) -> sitk.AffineTransform:
        """Convert to a ``SimpleITK.AffineTransform`` with the same mapping (centre at the origin).

        Returns
        -------
        SimpleITK.AffineTransform
            The transform.

        See Also
        --------
        from_sitk : The inverse conversion.

        Examples
        --------
        >>> shift = mk.Affine.from_parts(np.eye(2), translation=(1.0, 0.0))
        >>> shift.to_sitk().GetTranslation()
        (1.0, 0.0)
        """
        import SimpleITK as sitk

        t = sitk.AffineTransform(self.ndim)
        t.SetMatrix(tuple(float(v) for v in self.linear.ravel()))
        t.SetTranslation(tuple(float(v) for v in self.translation))
        return t

    # ------------------------------------------------------------------ files
    @classmethod
    def read(cls, path: str | os.PathLike) -> "Affine":
        """Read an ITK transform file: ITK text (``.txt``/``.tfm``) or MATLAB ``.mat`` (ITK, ANTs).

        Parameters
        ----------
        path : str or os.PathLike
            Text ("#Insight Transform File V1.0") or MATLAB v4/v5 ``.mat`` (ITK and ANTs
            ``antsRegistration`` output). The file must hold matrix-offset transforms
            (Affine/MatrixOffsetTransformBase, Euler, Similarity, Versor, Translation), which are
            composed.

        Returns
        -------
        Affine
            The transform.

        Raises
        ------
        FileNotFoundError
            No such file.
        ValueError
            Not a transform file of this kind; the message names the file.

        See Also
        --------
        write : Write a transform file.

        Examples
        --------
        >>> shift = mk.Affine.from_parts(np.eye(2), translation=(1.0, 0.0))
        >>> shift.write("shift.tfm")
        >>> mk.Affine.read("shift.tfm") == shift
        True
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"transform file not found: {path}")
        size = path.stat().st_size
        if size > _MAX_TRANSFORM_FILE_BYTES:
            raise ValueError(f"{path}: {size} bytes is far more than a matrix-offset transform file holds "
                             f"(at most {_MAX_TRANSFORM_FILE_BYTES} read); not a transform file of this kind")
        if path.suffix.lower() == ".mat":
            data = path.read_bytes()
            entries = [_read_mat_v5(path, data) if data[:6] == b"MATLAB" else _read_mat_v4(path, data)]
        else:
            entries = _read_itk_text(path)
        out = None
        for name, params, fixed in entries:
            try:
                a = _affine_from_itk(name, params, fixed)
            except ValueError as exc:
                raise ValueError(f"{path}: {exc}") from None
            out = a if out is None else out @ a
        if out is None:
            raise ValueError(f"{path}: no transform found")
        return out

    def write(self, path: str | os.PathLike) -> None:
        """Write as ``AffineTransform_double_N_N``: ITK text, or MATLAB v4 for ``.mat``.

        The file is readable by ITK, SimpleITK and ANTs; it is written to a temporary name, then
        renamed.

        Parameters
        ----------
        path : str or os.PathLike
            ``.txt``/``.tfm`` for ITK text, ``.mat`` for MATLAB v4.

        See Also
        --------
        read : Read it back.

        Examples
        --------
        >>> shift = mk.Affine.from_parts(np.eye(2), translation=(1.0, 0.0))
        >>> shift.write("shift.txt")
        >>> from pathlib import Path
        >>> print(Path("shift.txt").read_text())
        #Insight Transform File V1.0
        #Transform 0
        Transform: AffineTransform_double_2_2
        Parameters: 1.0 0.0 0.0 1.0 1.0 0.0
        FixedParameters: 0.0 0.0
        <BLANKLINE>
        """
        from medkern.io._atomic import atomic_path

        path = Path(path)
        n = self.ndim
        name = f"AffineTransform_double_{n}_{n}"
        params = np.concatenate([self.linear.ravel(), self.translation])
        fixed = np.zeros(n)
        with atomic_path(path) as tmp:
            if path.suffix.lower() == ".mat":
                with open(tmp, "wb") as f:
                    f.write(_mat_v4_entry(name, params))
                    f.write(_mat_v4_entry("fixed", fixed))
            else:
                text = ("#Insight Transform File V1.0\n#Transform 0\n"
                        f"Transform: {name}\n"
                        f"Parameters: {' '.join(repr(float(v)) for v in params)}\n"
                        f"FixedParameters: {' '.join(repr(float(v)) for v in fixed)}\n")
                Path(tmp).write_text(text)


def _euler3d(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ rx @ ry


def _versor_matrix(v: np.ndarray) -> np.ndarray:
    x, y, z = v
    w = np.sqrt(max(0.0, 1.0 - (x * x + y * y + z * z)))
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _affine_from_itk(name: str, p: np.ndarray, fixed: np.ndarray) -> Affine:
    """ITK parameter vectors (itk*Transform::SetParameters) to an Affine."""
    kind, _, dims = name.partition("_")
    parts = dims.split("_")
    n = int(parts[-1]) if parts and parts[-1].isdigit() else len(fixed)
    if n not in (2, 3):
        raise ValueError(f"ITK transform {name!r} has dimension {n}; only 2D and 3D transforms are read")
    center = fixed[:n] if fixed.size >= n else np.zeros(n)
    if kind in ("AffineTransform", "MatrixOffsetTransformBase") and p.size == n * n + n:
        return Affine.from_parts(p[: n * n].reshape(n, n), p[n * n:], center)
    if kind == "TranslationTransform" and p.size == n:
        return Affine.from_parts(np.eye(n), p)
    if kind == "IdentityTransform":
        return Affine.identity(n)
    if kind in ("Euler2DTransform", "Rigid2DTransform") and p.size == 3:
        c, s = np.cos(p[0]), np.sin(p[0])
        return Affine.from_parts([[c, -s], [s, c]], p[1:], center)
    if kind == "Euler3DTransform" and p.size == 6:
        if fixed.size > 3 and fixed[3] != 0:  # ComputeZYX: R = Rz Ry Rx
            cx, sx, cy, sy = np.cos(p[0]), np.sin(p[0]), np.cos(p[1]), np.sin(p[1])
            cz, sz = np.cos(p[2]), np.sin(p[2])
            rot = (np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
                   @ np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
                   @ np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]]))
        else:
            rot = _euler3d(*p[:3])
        return Affine.from_parts(rot, p[3:], center)
    if kind in ("VersorRigid3DTransform", "Similarity3DTransform") and p.size in (6, 7):
        norm = float(np.linalg.norm(p[:3]))
        if norm > 1 + 1e-6:  # the vector part of a unit quaternion (ITK refuses it too)
            raise ValueError(f"{name}: versor {p[:3].tolist()} has norm {norm:.6g} > 1; not a rotation")
    if kind == "VersorRigid3DTransform" and p.size == 6:
        return Affine.from_parts(_versor_matrix(p[:3]), p[3:], center)
    if kind == "Similarity3DTransform" and p.size == 7:
        return Affine.from_parts(p[6] * _versor_matrix(p[:3]), p[3:6], center)
    raise ValueError(f"unsupported ITK transform {name!r} with {p.size} parameters; read it with "
                     "SimpleITK.ReadTransform and convert with mk.Affine.from_sitk")


def _numbers(text: str, path: Path, line_no: int, key: str) -> np.ndarray:
    """The numbers of one 'Key: v v v' line, finite, or ValueError naming the file and line."""
    try:
        values = np.array(text.split(), dtype=np.float64)
    except ValueError:
        bad = next(t for t in text.split() if not _is_float(t))
        raise ValueError(f"{path}: line {line_no}: {key} holds {bad[:40]!r}, not a number") from None
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{path}: line {line_no}: {key} holds non-finite values (NaN or infinity)")
    return values


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def _read_itk_text(path: Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """ITK text transforms: 'Transform:', 'Parameters:', 'FixedParameters:' per transform (a
    CompositeTransform line has none of its own). A transform cut short is an error, never skipped."""
    lines = path.read_text(errors="replace").splitlines()
    if not lines or not lines[0].startswith("#Insight Transform File"):
        raise ValueError(f"{path}: not an ITK text transform file (missing '#Insight Transform File' header)")
    entries, name, params = [], None, None
    for line_no, line in enumerate(lines[1:], 2):
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "Transform":
            if params is not None:
                raise ValueError(f"{path}: line {line_no}: transform {name!r} has Parameters but no "
                                 "FixedParameters (truncated or corrupt file)")
            if name is not None and not name.startswith("CompositeTransform"):
                raise ValueError(f"{path}: line {line_no}: transform {name!r} has no Parameters "
                                 "(truncated or corrupt file)")
            name = value.strip()
        elif key == "Parameters":
            if name is None:
                raise ValueError(f"{path}: line {line_no}: Parameters before any 'Transform:' line")
            params = _numbers(value, path, line_no, "Parameters")
        elif key == "FixedParameters":
            if name is None or params is None:
                raise ValueError(f"{path}: line {line_no}: FixedParameters before Transform/Parameters")
            if not name.startswith("CompositeTransform"):
                entries.append((name, params, _numbers(value, path, line_no, "FixedParameters")))
            name, params = None, None
    if params is not None or (name is not None and not name.startswith("CompositeTransform")):
        raise ValueError(f"{path}: the file ends inside transform {name!r} (no "
                         f"{'FixedParameters' if params is not None else 'Parameters'}): truncated")
    return entries


# MATLAB v4 precision digit -> element type (ITK writes 0, ANTs single precision 1)
_MAT_V4_TYPES = {0: "f8", 1: "f4", 2: "i4", 3: "i2", 4: "u2", 5: "u1"}
# A transform file is a few hundred bytes; this bounds what is read and decompressed.
_MAX_TRANSFORM_FILE_BYTES = 1 << 20
_MAX_MAT_VALUES = 1 << 16


def _read_mat_v4(path: Path, data: bytes | None = None) -> tuple[str, np.ndarray, np.ndarray]:
    """MATLAB level-4 file as written by ITK's MatlabTransformIO: a parameter vector named after
    the transform type, and 'fixed'. Every length is checked against the bytes present."""
    data = path.read_bytes() if data is None else data
    pos, variables = 0, {}
    while pos < len(data):
        if len(data) - pos < 20:
            raise ValueError(f"{path}: {len(data) - pos} stray bytes at the end, too few for a MATLAB v4 "
                             "variable header (truncated file)")
        mopt = struct.unpack_from("<i", data, pos)[0]
        endian = "<"
        if not 0 <= mopt < 2000:
            endian = ">"
            mopt = struct.unpack_from(">i", data, pos)[0]
        mrows, ncols, imagf, namelen = struct.unpack_from(endian + "4i", data, pos + 4)
        machine, order, precision, kind = mopt // 1000, (mopt // 100) % 10, (mopt // 10) % 10, mopt % 10
        where = f"{path}: MATLAB v4 variable at byte {pos}"
        if not 0 <= mopt < 2000 or machine != (0 if endian == "<" else 1) or order or kind or imagf \
                or precision not in _MAT_V4_TYPES:
            raise ValueError(f"{where}: unsupported or corrupt type {mopt} (imaginary part {imagf}); not a "
                             "real numeric MATLAB v4 matrix as ITK and ANTs write them")
        if not (0 <= mrows <= _MAX_MAT_VALUES and 0 <= ncols <= _MAX_MAT_VALUES) or mrows * ncols > _MAX_MAT_VALUES:
            raise ValueError(f"{where}: size {mrows} x {ncols} is not that of a transform parameter vector")
        if not 1 <= namelen <= 256 or pos + 20 + namelen > len(data):
            raise ValueError(f"{where}: name length {namelen} is invalid or runs past the end of the file")
        name = data[pos + 20: pos + 20 + namelen].split(b"\0")[0].decode("ascii", "replace")
        pos += 20 + namelen
        count = mrows * ncols
        dtype = np.dtype(endian + _MAT_V4_TYPES[precision])
        if pos + count * dtype.itemsize > len(data):
            raise ValueError(f"{where}: {name!r} needs {count * dtype.itemsize} bytes of values, the file has "
                             f"{len(data) - pos} left (truncated file)")
        if name in variables:
            raise ValueError(f"{where}: variable {name!r} appears twice")
        # MATLAB stores column-major; the transform vectors are one column (or one row) either way.
        variables[name] = np.frombuffer(data, dtype=dtype, count=count, offset=pos).astype(np.float64)
        pos += count * dtype.itemsize
    return _transform_variables(path, variables)


def _transform_variables(path: Path, variables: dict) -> tuple[str, np.ndarray, np.ndarray]:
    fixed = variables.pop("fixed", np.zeros(0))
    if len(variables) != 1:
        raise ValueError(f"{path}: expected one transform parameter vector and 'fixed', got {sorted(variables)}")
    (name, params), = variables.items()
    for what, values in ((name, params), ("fixed", fixed)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"{path}: {what!r} holds non-finite values (NaN or infinity)")
    return name, params, fixed


# MATLAB v5 data types -> numpy element types (numeric ones only)
_MAT_V5_TYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
_MI_INT8, _MI_INT32, _MI_UINT32, _MI_MATRIX, _MI_COMPRESSED = 1, 5, 6, 14, 15


def _v5_elements(path: Path, data: bytes, endian: str, where: str):
    """(type, payload) of each data element of ``data`` (tags, small elements, 8-byte padding),
    every length checked against the bytes present."""
    pos = 0
    while pos < len(data):
        if len(data) - pos < 8:
            raise ValueError(f"{path}: {where}: {len(data) - pos} stray bytes, too few for a data element tag")
        kind, size = struct.unpack_from(endian + "II", data, pos)
        if kind >> 16:  # small data element: size and type packed in the first four bytes
            kind, size = kind & 0xFFFF, kind >> 16
            if size > 4:
                raise ValueError(f"{path}: {where}: small data element of {size} bytes (at most 4)")
            yield kind, data[pos + 4: pos + 4 + size]
            pos += 8
            continue
        pos += 8
        if size > len(data) - pos:
            raise ValueError(f"{path}: {where}: a data element of {size} bytes runs past the end "
                             f"({len(data) - pos} left; truncated file)")
        yield kind, data[pos: pos + size]
        pos += size if kind == _MI_COMPRESSED else (size + 7) // 8 * 8


def _read_mat_v5(path: Path, data: bytes) -> tuple[str, np.ndarray, np.ndarray]:
    """MATLAB level-5 file (128-byte text header, then tagged data elements, possibly
    zlib-compressed): real numeric matrices named after the transform type, and 'fixed'."""
    import zlib

    if len(data) < 128:
        raise ValueError(f"{path}: a MATLAB v5 file needs a 128-byte header, the file has {len(data)} bytes")
    marker = data[126:128]
    if marker not in (b"IM", b"MI"):
        raise ValueError(f"{path}: MATLAB v5 header has endian marker {marker!r}, not 'IM' or 'MI'")
    endian = "<" if marker == b"IM" else ">"
    variables: dict[str, np.ndarray] = {}

    def matrix(payload: bytes, where: str) -> None:
        parts = list(_v5_elements(path, payload, endian, where))
        if len(parts) < 4 or parts[0][0] != _MI_UINT32 or len(parts[0][1]) < 8 or parts[1][0] != _MI_INT32 \
                or parts[2][0] != _MI_INT8:
            raise ValueError(f"{path}: {where}: not a MATLAB matrix (flags, dimensions, name, values)")
        flags = struct.unpack_from(endian + "I", parts[0][1])[0]
        mclass, complex_ = flags & 0xFF, bool(flags & 0x800)
        if mclass not in range(6, 16) or complex_:
            raise ValueError(f"{path}: {where}: MATLAB class {mclass}{' (complex)' if complex_ else ''} is not a "
                             "real numeric matrix")
        dims = np.frombuffer(parts[1][1], dtype=endian + "i4")
        if dims.size < 2 or np.any(dims < 0) or math.prod(int(d) for d in dims) > _MAX_MAT_VALUES:
            raise ValueError(f"{path}: {where}: dimensions {dims.tolist()} are not a transform parameter vector")
        name = parts[2][1].decode("ascii", "replace")
        kind, raw = parts[3]
        if kind not in _MAT_V5_TYPES:
            raise ValueError(f"{path}: {where}: {name!r} has values of MATLAB data type {kind}, not numeric")
        dtype = np.dtype(endian + _MAT_V5_TYPES[kind])
        count = math.prod(int(d) for d in dims)
        if len(raw) != count * dtype.itemsize:
            raise ValueError(f"{path}: {where}: {name!r} has {len(raw)} bytes of values for {dims.tolist()} "
                             f"{dtype.name} (truncated or corrupt)")
        if name in variables:
            raise ValueError(f"{path}: {where}: variable {name!r} appears twice")
        variables[name] = np.frombuffer(raw, dtype=dtype).astype(np.float64)

    for n, (kind, payload) in enumerate(_v5_elements(path, data[128:], endian, "MATLAB v5 data")):
        where = f"MATLAB v5 element {n + 1}"
        if kind == _MI_COMPRESSED:
            inflater = zlib.decompressobj()
            try:
                payload = inflater.decompress(payload, _MAX_TRANSFORM_FILE_BYTES + 1)
            except zlib.error as exc:
                raise ValueError(f"{path}: {where}: corrupt compressed data ({exc})") from None
            if len(payload) > _MAX_TRANSFORM_FILE_BYTES or inflater.unconsumed_tail:
                raise ValueError(f"{path}: {where}: decompresses to more than {_MAX_TRANSFORM_FILE_BYTES} bytes; "
                                 "not a transform")
            if not inflater.eof:
                raise ValueError(f"{path}: {where}: the compressed data is truncated")
            inner = list(_v5_elements(path, payload, endian, where))
            if len(inner) != 1:
                raise ValueError(f"{path}: {where}: a compressed element must hold one matrix")
            kind, payload = inner[0]
        if kind != _MI_MATRIX:
            raise ValueError(f"{path}: {where}: data type {kind} is not a matrix")
        matrix(payload, where)
    return _transform_variables(path, variables)


def _mat_v4_entry(name: str, values: np.ndarray) -> bytes:
    raw = name.encode("ascii") + b"\0"
    header = struct.pack("<5i", 0, values.size, 1, 0, len(raw))  # little-endian double column
    return header + raw + np.asarray(values, dtype="<f8").tobytes()


class DisplacementField(Transform):
    """Dense displacement transform ``p -> p + u(p)`` (ITK ``DisplacementFieldTransform``).

    Like every transform it maps output points to input points (ITK convention).

    Parameters
    ----------
    field : Image
        A vector Image whose components are LPS world displacements in mm, ``(x, y[, z])``
        order, e.g. an array of shape ``(nz, ny, nx, 3)`` with ``vector=True``, float32 or
        float64. ``u`` is linearly interpolated between grid points and zero more than half a
        voxel outside the grid. A NaN or +-inf displacement is kept: the points it moves count
        as outside the sampled image (they get ``fill`` in :func:`medkern.warp`).

    Raises
    ------
    TypeError
        ``field`` is not a vector Image, or not floating point.
    ValueError
        The number of components differs from the spatial dimension.

    See Also
    --------
    Affine : An affine transform.
    warp : Apply a transform to an image.
    register : ``transform="deformable"`` returns one.

    Examples
    --------
    >>> u = np.zeros((4, 4, 2), np.float32)
    >>> u[..., 0] = 1.5                     # 1.5 mm along x everywhere
    >>> field = mk.DisplacementField(mk.Image(u, vector=True))
    >>> field
    DisplacementField(Image(vector shape=(4, 4), dtype=float32, spacing=(1, 1), origin=(0, 0), numpy))
    >>> field.apply([[1.0, 1.0]])
    array([[2.5, 1. ]])
    """

    __slots__ = ("_field",)

    def __init__(self, field: Image) -> None:
        if not isinstance(field, Image) or not field.is_vector:
            raise TypeError("field must be a vector mk.Image (array of shape spatial + (ndim,), "
                            "vector=True) holding world-mm displacements")
        if field.array.shape[-1] != field.ndim:
            raise ValueError(f"a {field.ndim}D displacement field needs {field.ndim} components per voxel, "
                             f"got {field.array.shape[-1]}")
        if field.array.dtype.kind != "f":
            raise TypeError(f"displacements must be float32 or float64, got {field.array.dtype}")
        self._field = field

    @property
    def field(self) -> Image:
        """The displacement field, a vector Image of LPS displacements in mm."""
        return self._field

    @property
    def ndim(self) -> int:
        """Spatial dimension, 2 or 3."""
        return self._field.ndim

    def displacement(self, points: ArrayLike) -> np.ndarray:
        """Evaluate the displacement ``u(p)``: linear between grid points, zero outside the grid.

        Parameters
        ----------
        points : array_like
            LPS points in mm, shape ``(..., ndim)``.

        Returns
        -------
        numpy.ndarray
            Displacements in mm, same shape.

        Raises
        ------
        ValueError
            The trailing axis is not of length ``ndim``.

        See Also
        --------
        apply : ``p + u(p)``.

        Examples
        --------
        >>> u = np.zeros((4, 4, 2), np.float32)
        >>> u[..., 0] = 1.5                     # 1.5 mm along x everywhere
        >>> field = mk.DisplacementField(mk.Image(u, vector=True))
        >>> field.displacement([[1.0, 1.0], [10.0, 1.0]])     # the second point is off the grid
        array([[1.5, 0. ],
               [0. , 0. ]])
        """
        pts = self._points(points)
        idx = self._field.world_to_index(pts.reshape(-1, self.ndim)).T
        u = np.empty(idx.shape[::-1], dtype=np.float64)
        arr = self._field.array
        arr = arr.get() if is_cupy_array(arr) else np.asarray(arr)
        for q in range(self.ndim):
            u[:, q] = map_coordinates(arr[..., q], idx, "linear", fill=0.0)
        return u.reshape(pts.shape)

    def apply(self, points: ArrayLike) -> np.ndarray:
        """Map LPS points of the output space to the input space: ``p + u(p)``.

        Parameters
        ----------
        points : array_like
            LPS points in mm, shape ``(..., ndim)``.

        Returns
        -------
        numpy.ndarray
            The mapped points, same shape.

        See Also
        --------
        displacement : ``u(p)`` alone.

        Examples
        --------
        >>> u = np.zeros((4, 4, 2), np.float32)
        >>> u[..., 0] = 1.5                     # 1.5 mm along x everywhere
        >>> field = mk.DisplacementField(mk.Image(u, vector=True))
        >>> field.apply([1.0, 2.0])
        array([2.5, 2. ])
        """
        pts = self._points(points)
        return pts + self.displacement(pts)

    def inverse(self, iterations: int = 30, tolerance_mm: float = 1e-4) -> "DisplacementField":
        """Invert the field on the same grid by fixed-point iteration ``v(p) = -u(p + v(p))``.

        The iteration (Chen et al. 2008) stops when the largest update is below
        ``tolerance_mm``. It converges where the field is invertible (Jacobian determinant
        positive, displacement gradients below 1).

        Parameters
        ----------
        iterations : int, optional
            At most this many iterations (at least 1); default 30.
        tolerance_mm : float, optional
            Stop when the largest update is below this; default 1e-4 mm.

        Returns
        -------
        DisplacementField
            The inverse field, on this field's grid and dtype.

        Raises
        ------
        ValueError
            ``iterations`` is below 1.

        See Also
        --------
        apply

        Examples
        --------
        >>> u = np.zeros((4, 4, 2), np.float32)
        >>> u[..., 0] = 1.5                     # 1.5 mm along x everywhere
        >>> field = mk.DisplacementField(mk.Image(u, vector=True))
        >>> float(field.inverse().field.array[1, 1, 0])
        -1.5
        """
        if iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {iterations}")
        grid = np.stack(np.meshgrid(*[np.arange(n) for n in self._field.shape], indexing="ij"), -1)
        pts = self._field.index_to_world(grid.reshape(-1, self.ndim).astype(np.float64))
        v = np.zeros_like(pts)
        for _ in range(iterations):
            new = -self.displacement(pts + v)
            step = np.max(np.abs(new - v)) if v.size else 0.0
            v = new
            if step < tolerance_mm:
                break
        arr = v.reshape(self._field.shape + (self.ndim,)).astype(self._field.array.dtype)
        return DisplacementField(self._field.with_array(arr, vector=True))

    def __repr__(self) -> str:
        return f"DisplacementField({self._field!r})"

    @classmethod
    def from_sitk(cls, transform_or_image: sitk.Transform | sitk.Image) -> "DisplacementField":
        """Make a DisplacementField from a SimpleITK displacement transform or vector image.

        Parameters
        ----------
        transform_or_image : SimpleITK.DisplacementFieldTransform or SimpleITK.Image
            The transform, or its vector displacement image.

        Returns
        -------
        DisplacementField
            The same mapping.

        Raises
        ------
        TypeError
            Neither a displacement field transform nor a SimpleITK image.

        See Also
        --------
        to_sitk : The inverse conversion.

        Examples
        --------
        >>> u = np.zeros((4, 4, 2), np.float32)
        >>> u[..., 0] = 1.5                     # 1.5 mm along x everywhere
        >>> field = mk.DisplacementField(mk.Image(u, vector=True))
        >>> mk.DisplacementField.from_sitk(field.to_sitk()).field.dtype
        dtype('float64')
        """
        import SimpleITK as sitk

        obj = transform_or_image
        if isinstance(obj, sitk.Transform):
            obj = obj.Downcast() if hasattr(obj, "Downcast") else obj
            if not isinstance(obj, sitk.DisplacementFieldTransform):
                raise TypeError(f"{obj.GetName()} is not a DisplacementFieldTransform")
            obj = obj.GetDisplacementField()
        if not isinstance(obj, sitk.Image):
            raise TypeError("expected a SimpleITK DisplacementFieldTransform or vector image")
        return cls(Image.from_sitk(obj))

    def to_sitk(self) -> sitk.DisplacementFieldTransform:
        """Convert to a ``SimpleITK.DisplacementFieldTransform`` (float64 field, as ITK requires).

        Returns
        -------
        SimpleITK.DisplacementFieldTransform
            The transform.

        See Also
        --------
        from_sitk : The inverse conversion.

        Examples
        --------
        >>> u = np.zeros((4, 4, 2), np.float32)
        >>> u[..., 0] = 1.5                     # 1.5 mm along x everywhere
        >>> field = mk.DisplacementField(mk.Image(u, vector=True))
        >>> field.to_sitk().GetName()
        'DisplacementFieldTransform'
        """
        import SimpleITK as sitk

        img = self._field.with_array(np.asarray(self._field, dtype=np.float64), vector=True)
        return sitk.DisplacementFieldTransform(img.to_sitk())


class Composite(Transform):
    """Chain of transforms, outermost first: ``Composite([a, b]).apply(p) == a.apply(b.apply(p))``."""

    __slots__ = ("_transforms",)

    def __init__(self, transforms: list[Transform]) -> None:
        flat: list[Transform] = []
        for t in transforms:
            if not isinstance(t, Transform):
                raise TypeError(f"Composite takes transforms, got {type(t).__name__}")
            flat.extend(t._transforms if isinstance(t, Composite) else [t])
        if not flat:
            raise ValueError("Composite needs at least one transform")
        if len({t.ndim for t in flat}) != 1:
            raise ValueError("all transforms of a Composite must have the same ndim")
        self._transforms = tuple(flat)

    @property
    def transforms(self) -> tuple[Transform, ...]:
        return self._transforms

    @property
    def ndim(self) -> int:
        return self._transforms[0].ndim

    def apply(self, points: ArrayLike) -> np.ndarray:
        pts = self._points(points)
        for t in reversed(self._transforms):
            pts = t.apply(pts)
        return pts

    def inverse(self) -> "Composite":
        return Composite([t.inverse() for t in reversed(self._transforms)])

    def __repr__(self) -> str:
        return "Composite([" + ", ".join(repr(t) for t in self._transforms) + "])"
