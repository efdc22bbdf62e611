"""The Image: a voxel array plus its physical geometry (DESIGN conventions).

* The array is in numpy axis order: 3D ``[k, j, i]`` (slice, row, column), 2D ``[j, i]``.
* ``spacing`` is per array axis, in mm.
* ``origin`` is the world position (LPS mm, ``(x, y, z)``) of the centre of voxel 0.
* ``direction[:, a]`` is the LPS unit vector of array axis ``a``.
* ``world = origin + direction @ diag(spacing) @ index``; ``affine`` is that map as a matrix.

Geometry is immutable; the array is shared, not copied (``Image(a)`` is a cheap view of ``a``).
A vector image (``vector=True``) carries its components on a trailing array axis, e.g. a
displacement field of shape ``(nz, ny, nx, 3)``; its geometry describes the spatial axes only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from medkern._dispatch import is_cupy_array
from medkern._typing import Array

if TYPE_CHECKING:
    import nibabel as nib
    import SimpleITK as sitk

__all__ = ["Image"]

_ACCEPTED_DTYPES = ("bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64",
                    "float32", "float64")


def _frozen(a: np.ndarray) -> np.ndarray:
    a = np.array(a, dtype=np.float64, copy=True)
    a.setflags(write=False)
    return a


def _checked_array(array: Any, vector: bool) -> Any:
    """``array`` as an Image's voxels (numpy unless it is CuPy), or the error that says why not."""
    if isinstance(array, Image):
        raise TypeError("array is already an Image; use img.with_array(...) or img.copy()")
    if not is_cupy_array(array):
        array = np.asarray(array)
    if array.dtype.name not in _ACCEPTED_DTYPES:
        raise TypeError(
            f"Image array dtype {array.dtype} is not supported; use one of {', '.join(_ACCEPTED_DTYPES)}"
        )
    if array.ndim - (1 if vector else 0) not in (2, 3):
        raise ValueError(
            f"Image needs a 2D or 3D array{' plus a component axis' if vector else ''}, "
            f"got shape {tuple(array.shape)}"
        )
    if vector and array.shape[-1] < 1:
        raise ValueError("a vector image needs at least one component")
    return array


class Image:
    """A 2D or 3D image with LPS geometry: a voxel array plus spacing, origin and direction.

    * The array is in numpy axis order: 3D ``[k, j, i]`` (slice, row, column), 2D ``[j, i]``.
    * ``spacing`` is per array axis, in mm.
    * ``origin`` is the world position (LPS mm, ``(x, y, z)``) of the centre of voxel 0.
    * ``direction[:, a]`` is the LPS unit vector of array axis ``a``.
    * ``world = origin + direction @ diag(spacing) @ index``; :attr:`affine` is that map as a
      matrix.

    Geometry is immutable; the array is shared, not copied (``Image(a)`` is a cheap view of
    ``a``).

    Parameters
    ----------
    array : numpy.ndarray or cupy.ndarray
        The voxels, 2D or 3D (one more trailing axis when ``vector=True``), in array-axis order.
        Dtypes: bool, (u)int8 to (u)int64, float32, float64.
    spacing : float or sequence of float, optional
        Voxel size in mm per array axis, array-axis order, or one value for every axis.
        Default 1.
    origin : sequence of float, optional
        LPS position in mm of the centre of voxel ``(0, 0[, 0])``. Default 0.
    direction : array_like, optional
        ``ndim x ndim`` matrix whose column ``a`` is the unit vector of array axis ``a`` (a
        flat sequence of ``ndim * ndim`` values is reshaped). Default: the axis-aligned
        orientation where column index i runs along x, row index j along y and slice index k
        along z, i.e. ``np.eye(ndim)[:, ::-1]`` (ITK's identity direction, as SimpleITK gives
        for ``GetImageFromArray``). Note that ``np.eye(3)`` is a different orientation here
        (array axis 0 along x). Columns must be linearly independent unit vectors (within 1e-3);
        they are not renormalised, so a matrix read from a file survives a round trip exactly.
    vector : bool, optional
        The last array axis holds vector components, not a spatial axis (e.g. a displacement
        field of shape ``(nz, ny, nx, 3)``); the geometry describes the spatial axes only.

    Raises
    ------
    TypeError
        ``array`` is already an Image, or its dtype is not supported.
    ValueError
        The array is not 2D or 3D; spacing is not finite and positive; origin or direction
        have the wrong size or are not finite; direction is singular or has a column that is
        not a unit vector.

    See Also
    --------
    medkern.read : Read an Image from DICOM, NIfTI, NRRD or MetaImage.
    medkern.write : Write an Image.
    medkern.resample : Change the voxel spacing.

    Examples
    --------
    >>> img = mk.Image(np.zeros((2, 3, 4), np.float32), spacing=(2.5, 1.0, 0.5),
    ...                origin=(10, 20, 30))
    >>> img
    Image(shape=(2, 3, 4), dtype=float32, spacing=(2.5, 1, 0.5), origin=(10, 20, 30), numpy)
    >>> img.direction    # default: i along x, j along y, k along z
    array([[0., 0., 1.],
           [0., 1., 0.],
           [1., 0., 0.]])
    >>> img.index_to_world([1, 2, 3])    # voxel (k=1, j=2, i=3) in LPS mm
    array([11.5, 22. , 32.5])
    """

    __slots__ = ("_array", "_spacing", "_origin", "_direction", "_vector")
    __array_priority__ = 10

    def __init__(
        self,
        array: Array,
        spacing: Sequence[float] | float | None = None,
        origin: Sequence[float] | np.ndarray | None = None,
        direction: Sequence[Sequence[float]] | np.ndarray | None = None,
        *,
        vector: bool = False,
    ) -> None:
        array = _checked_array(array, vector)
        ndim = array.ndim - (1 if vector else 0)
        spacing_t: tuple[float, ...]
        if spacing is None:
            spacing_t = (1.0,) * ndim
        elif isinstance(spacing, (int, float, np.number)):
            spacing_t = (float(spacing),) * ndim
        else:
            spacing_t = tuple(float(s) for s in spacing)
        if len(spacing_t) != ndim:
            raise ValueError(f"spacing has {len(spacing_t)} values for a {ndim}D image (array-axis order)")
        if not all(np.isfinite(s) and s > 0 for s in spacing_t):
            raise ValueError(f"spacing must be finite and positive, got {spacing_t}")
        origin_a = np.zeros(ndim) if origin is None else np.asarray(origin, dtype=np.float64)
        if origin_a.shape != (ndim,) or not np.all(np.isfinite(origin_a)):
            raise ValueError(f"origin must be {ndim} finite numbers (LPS x, y[, z]), got {origin_a!r}")
        direction_a = np.eye(ndim)[:, ::-1] if direction is None else np.asarray(direction, dtype=np.float64)
        if direction_a.shape == (ndim * ndim,):
            direction_a = direction_a.reshape(ndim, ndim)
        if direction_a.shape != (ndim, ndim) or not np.all(np.isfinite(direction_a)):
            raise ValueError(f"direction must be a {ndim}x{ndim} finite matrix, got shape {direction_a.shape}")
        if abs(np.linalg.det(direction_a)) < 1e-6:
            raise ValueError("direction is singular: its columns (the axis unit vectors) must be independent")
        lengths = np.linalg.norm(direction_a, axis=0)
        if np.any(np.abs(lengths - 1.0) > 1e-3):
            # A scaled column would stretch the world extent along that axis beyond what spacing says.
            raise ValueError(f"direction columns must be unit vectors (the scale belongs in spacing), got "
                             f"lengths {[round(float(v), 6) for v in lengths]}")
        self._array: Any = array  # numpy or CuPy: the attributes used are the ones both have
        self._spacing = spacing_t
        self._origin = _frozen(origin_a)
        self._direction = _frozen(direction_a)
        self._vector = bool(vector)

    # ------------------------------------------------------------------ basic attributes
    @property
    def array(self) -> Array:
        """The voxel array (numpy or cupy), shared with the image, not a copy."""
        return self._array

    @property
    def spacing(self) -> tuple[float, ...]:
        """Voxel size in mm per spatial axis, array-axis order."""
        return self._spacing

    @property
    def origin(self) -> np.ndarray:
        """LPS position in mm of the centre of voxel 0 (read-only array, ``(x, y[, z])``)."""
        return self._origin

    @property
    def direction(self) -> np.ndarray:
        """Read-only ``ndim x ndim`` matrix; column ``a`` is the LPS unit vector of array axis ``a``."""
        return self._direction

    @property
    def is_vector(self) -> bool:
        """Whether the last array axis holds vector components rather than a spatial axis."""
        return self._vector

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions (2 or 3)."""
        return self._array.ndim - (1 if self._vector else 0)

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape in array-axis order."""
        return tuple(self._array.shape[: self.ndim])

    @property
    def dtype(self) -> np.dtype:
        """The dtype of the voxel array."""
        return self._array.dtype

    @property
    def size(self) -> int:
        """Number of voxels (the product of the spatial shape)."""
        return int(np.prod(self.shape))

    @property
    def affine(self) -> np.ndarray:
        """The ``(ndim+1) x (ndim+1)`` matrix from indices (array order) to LPS world mm."""
        a = np.eye(self.ndim + 1)
        a[: self.ndim, : self.ndim] = self._direction * np.asarray(self._spacing)[None, :]
        a[: self.ndim, self.ndim] = self._origin
        return a

    @property
    def geometry(self) -> dict[str, Any]:
        """The geometry as keyword arguments for :class:`Image`."""
        return {"spacing": self._spacing, "origin": self._origin, "direction": self._direction}

    # ------------------------------------------------------------------ coordinates
    def index_to_world(self, index: ArrayLike) -> np.ndarray:
        """Map continuous indices in array order to LPS world points.

        Parameters
        ----------
        index : array_like
            Indices of shape ``(..., ndim)``, array-axis order; voxel centres are integers.

        Returns
        -------
        numpy.ndarray
            LPS points in mm, shape ``(..., ndim)``.

        Raises
        ------
        ValueError
            The trailing axis of ``index`` is not of length ``ndim``.

        See Also
        --------
        world_to_index : The inverse map.

        Examples
        --------
        >>> img = mk.Image(np.zeros((4, 4)), spacing=(2.0, 0.5), origin=(-10, 5))
        >>> img.index_to_world([[0, 0], [1, 2]])    # rows of (j, i) -> rows of (x, y)
        array([[-10.,   5.],
               [ -9.,   7.]])
        """
        idx = np.asarray(index, dtype=np.float64)
        if idx.shape[-1:] != (self.ndim,):
            raise ValueError(f"index must have a trailing axis of length {self.ndim}, got shape {idx.shape}")
        m = self.affine
        return idx @ m[: self.ndim, : self.ndim].T + m[: self.ndim, self.ndim]

    def world_to_index(self, points: ArrayLike) -> np.ndarray:
        """Map LPS world points to continuous indices in array order.

        Parameters
        ----------
        points : array_like
            LPS points in mm of shape ``(..., ndim)``.

        Returns
        -------
        numpy.ndarray
            Continuous indices, shape ``(..., ndim)``, array-axis order; voxel centres are
            integers.

        Raises
        ------
        ValueError
            The trailing axis of ``points`` is not of length ``ndim``.

        See Also
        --------
        index_to_world : The inverse map.

        Examples
        --------
        >>> img = mk.Image(np.zeros((4, 4)), spacing=(2.0, 0.5), origin=(-10, 5))
        >>> img.world_to_index([-9.0, 7.0])
        array([1., 2.])
        """
        pts = np.asarray(points, dtype=np.float64)
        if pts.shape[-1:] != (self.ndim,):
            raise ValueError(f"points must have a trailing axis of length {self.ndim}, got shape {pts.shape}")
        inv = np.linalg.inv(self.affine)
        return pts @ inv[: self.ndim, : self.ndim].T + inv[: self.ndim, self.ndim]

    # ------------------------------------------------------------------ derived images
    def with_array(self, array: Array, *, vector: bool | None = None) -> "Image":
        """Make a new Image with this geometry and another array of the same spatial shape.

        Parameters
        ----------
        array : numpy.ndarray or cupy.ndarray
            The new voxels (shared, not copied).
        vector : bool, optional
            Whether ``array`` holds vector components on a trailing axis; default: as this image.

        Returns
        -------
        Image
            The new image.

        Raises
        ------
        ValueError
            The spatial shape of ``array`` differs from this image's.

        See Also
        --------
        copy, astype

        Examples
        --------
        >>> img = mk.Image(np.zeros((2, 3)), spacing=(2.0, 1.0))
        >>> img.with_array(np.ones((2, 3), np.uint8))
        Image(shape=(2, 3), dtype=uint8, spacing=(2, 1), origin=(0, 0), numpy)
        """
        vector = self._vector if vector is None else vector
        # The geometry is this image's, already checked and frozen: only the array is checked
        # (pipelines call this for every intermediate, where the full check showed in profiles).
        out = Image.__new__(Image)
        out._array = _checked_array(array, vector)
        out._spacing, out._origin, out._direction = self._spacing, self._origin, self._direction
        out._vector = bool(vector)
        spatial = tuple(out._array.shape[: out._array.ndim - out._vector])
        if spatial != self.shape:
            raise ValueError(f"array spatial shape {spatial} differs from the image's {self.shape}")
        return out

    def copy(self) -> "Image":
        """Copy the voxel array into a new Image with the same geometry.

        Returns
        -------
        Image
            An image whose array is a copy of this one's.

        See Also
        --------
        with_array, astype

        Examples
        --------
        >>> img = mk.Image(np.zeros((2, 2)))
        >>> c = img.copy()
        >>> c.array[0, 0] = 5
        >>> float(img.array[0, 0])
        0.0
        """
        return self.with_array(self._array.copy())

    def astype(self, dtype: DTypeLike) -> "Image":
        """Convert the voxels to another dtype, keeping the geometry.

        Parameters
        ----------
        dtype : numpy dtype or str
            The new dtype (numpy casting rules: floats are truncated towards zero).

        Returns
        -------
        Image
            A new image with a converted copy of the array.

        See Also
        --------
        with_array, copy

        Examples
        --------
        >>> mk.Image(np.full((2, 2), 1.7)).astype(np.int16).array
        array([[1, 1],
               [1, 1]], dtype=int16)
        """
        return self.with_array(self._array.astype(dtype))

    def same_geometry(self, other: "Image", atol: float = 1e-6) -> bool:
        """Tell whether another image has the same grid: shape, spacing, origin and direction.

        Parameters
        ----------
        other : Image
            The image to compare with.
        atol : float, optional
            Absolute tolerance, in mm for spacing and origin and in cosine for direction.

        Returns
        -------
        bool
            True when the grids agree within ``atol``.

        See Also
        --------
        medkern.resample_to : Resample an image onto another's grid.

        Examples
        --------
        >>> a = mk.Image(np.zeros((3, 3)), spacing=1.0)
        >>> a.same_geometry(mk.Image(np.ones((3, 3)), spacing=1.0 + 1e-9))
        True
        >>> a.same_geometry(mk.Image(np.zeros((3, 3)), spacing=2.0))
        False
        """
        return (
            self.shape == other.shape
            and np.allclose(self._spacing, other.spacing, rtol=0, atol=atol)
            and np.allclose(self._origin, other.origin, rtol=0, atol=atol)
            and np.allclose(self._direction, other.direction, rtol=0, atol=atol)
        )

    def __getitem__(self, key: Any) -> "Image":
        """Crop or subsample with basic slices (a view); the geometry follows the voxels."""
        if not isinstance(key, tuple):
            key = (key,)
        if len(key) > self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}D image")
        key = key + (slice(None),) * (self.ndim - len(key))
        starts, steps = [], []
        for axis, (k, n) in enumerate(zip(key, self.shape)):
            if not isinstance(k, slice):
                raise TypeError(
                    f"Image indexing takes slices only (axis {axis} got {k!r}); index img.array for values"
                )
            start, _, step = k.indices(n)
            if step < 1:
                raise ValueError("Image slices need a positive step; use mk.flip-free views via img.array")
            starts.append(start)
            steps.append(step)
        origin = self.index_to_world(np.asarray(starts, dtype=np.float64))
        spacing = tuple(s * st for s, st in zip(self._spacing, steps))
        return Image(self._array[key], spacing, origin, self._direction, vector=self._vector)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self._array.get() if is_cupy_array(self._array) else self._array
        return np.asarray(a, dtype=dtype)

    def __repr__(self) -> str:
        sp = ", ".join(f"{s:g}" for s in self._spacing)
        og = ", ".join(f"{o:g}" for o in self._origin)
        kind = "vector " if self._vector else ""
        where = "cupy" if is_cupy_array(self._array) else "numpy"
        return (f"Image({kind}shape={self.shape}, dtype={self.dtype}, spacing=({sp}), origin=({og}), "
                f"{where})")

    # ------------------------------------------------------------------ SimpleITK interop
    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "Image":
        """Make an Image from a ``SimpleITK.Image``.

        ITK's ``(x, y, z)`` axis order is reversed to array order; the geometry is kept exactly.

        Parameters
        ----------
        image : SimpleITK.Image
            A 2D or 3D image, scalar or vector (several components per pixel).

        Returns
        -------
        Image
            The same voxels and geometry, in array-axis order.

        Raises
        ------
        ValueError
            The SimpleITK image is neither 2D nor 3D.

        See Also
        --------
        to_sitk : The inverse conversion.

        Examples
        --------
        >>> import SimpleITK as sitk
        >>> s = sitk.Image(4, 3, 2, sitk.sitkInt16)    # x, y, z sizes
        >>> s.SetSpacing((0.5, 1.0, 2.5))
        >>> mk.Image.from_sitk(s)
        Image(shape=(2, 3, 4), dtype=int16, spacing=(2.5, 1, 0.5), origin=(0, 0, 0), numpy)
        """
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(image)
        ndim = image.GetDimension()
        if ndim not in (2, 3):
            raise ValueError(f"only 2D and 3D SimpleITK images are supported, got {ndim}D")
        vector = image.GetNumberOfComponentsPerPixel() > 1
        d_itk = np.asarray(image.GetDirection(), dtype=np.float64).reshape(ndim, ndim)
        return cls(array, spacing=image.GetSpacing()[::-1], origin=image.GetOrigin(),
                   direction=d_itk[:, ::-1], vector=vector)

    def to_sitk(self) -> sitk.Image:
        """Convert to a ``SimpleITK.Image`` with identical geometry.

        Returns
        -------
        SimpleITK.Image
            The voxels (bool stored as uint8, a cupy array copied to the host) with spacing,
            origin and direction in ITK's ``(x, y, z)`` order.

        See Also
        --------
        from_sitk : The inverse conversion.

        Examples
        --------
        >>> s = mk.Image(np.zeros((2, 3, 4), np.float32), spacing=(2.5, 1.0, 0.5)).to_sitk()
        >>> s.GetSize(), s.GetSpacing()
        ((4, 3, 2), (0.5, 1.0, 2.5))
        """
        import SimpleITK as sitk

        array = np.asarray(self)
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        out = sitk.GetImageFromArray(array, isVector=self._vector)
        out.SetSpacing(tuple(float(s) for s in self._spacing[::-1]))
        out.SetOrigin(tuple(float(o) for o in self._origin))
        out.SetDirection(tuple(float(v) for v in self._direction[:, ::-1].ravel()))
        return out

    # ------------------------------------------------------------------ nibabel interop
    @classmethod
    def from_nibabel(cls, nifti: nib.Nifti1Image | nib.Nifti2Image) -> "Image":
        """Make an Image from a nibabel image.

        NIfTI is RAS with axes ``(i, j, k)``: both the axis order and the orientation are
        converted to medkern's array order and LPS here.

        Parameters
        ----------
        nifti : nibabel.Nifti1Image or nibabel.Nifti2Image
            A 2D or 3D image (a 3D file whose last axis has length 1 is read as 2D).

        Returns
        -------
        Image
            The voxels in array order ``[k, j, i]`` with LPS geometry.

        See Also
        --------
        to_nibabel : The inverse conversion.
        medkern.read : Read a ``.nii`` or ``.nii.gz`` file.

        Examples
        --------
        >>> import nibabel as nib
        >>> ras = np.diag([0.5, 1.0, 2.5, 1.0])
        >>> ras[:3, 3] = (10, 20, 30)
        >>> nii = nib.Nifti1Image(np.zeros((4, 3, 2), np.float32), ras)
        >>> mk.Image.from_nibabel(nii)     # RAS (10, 20, 30) is LPS (-10, -20, 30)
        Image(shape=(2, 3, 4), dtype=float32, spacing=(2.5, 1, 0.5), origin=(-10, -20, 30), numpy)
        """
        from medkern.io.nifti import image_from_nibabel

        return image_from_nibabel(nifti)

    def to_nibabel(self) -> nib.Nifti1Image:
        """Convert to a ``nibabel.Nifti1Image`` (RAS affine, ``(i, j, k)`` axis order).

        Returns
        -------
        nibabel.Nifti1Image
            The voxels with axes reversed to ``(i, j, k)`` and the affine in RAS.

        See Also
        --------
        from_nibabel : The inverse conversion.
        medkern.write : Write a ``.nii`` or ``.nii.gz`` file.

        Examples
        --------
        >>> img = mk.Image(np.zeros((2, 3, 4), np.float32), spacing=(2.5, 1.0, 0.5), origin=(10, 20, 30))
        >>> nii = img.to_nibabel()
        >>> nii.shape
        (4, 3, 2)
        >>> nii.affine
        array([[ -0.5,   0. ,   0. , -10. ],
               [  0. ,  -1. ,   0. , -20. ],
               [  0. ,   0. ,   2.5,  30. ],
               [  0. ,   0. ,   0. ,   1. ]])
        """
        from medkern.io.nifti import image_to_nibabel

        return image_to_nibabel(self)
