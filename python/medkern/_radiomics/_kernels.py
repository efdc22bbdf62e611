"""Texture-matrix kernels (C++/OpenMP, cpp/include/medkern/texture.hpp) behind the dispatch table.

Every kernel takes the discretised ROI as an int32 volume ``levels`` (0 outside the ROI intensity
mask, 1..n_levels inside); ``by_slice`` restricts neighbourhoods to planes of array axis 0.
"""

from __future__ import annotations

from medkern._dispatch import Kernel, get_num_threads


def _core():
    from medkern import _core

    return _core


def _cpp_glcm(levels, n_levels, by_slice, distance):
    return _core().texture_glcm(levels, n_levels, by_slice, distance, get_num_threads())


def _cpp_glrlm(levels, n_levels, by_slice):
    return _core().texture_glrlm(levels, n_levels, by_slice, get_num_threads())


def _cpp_zones(levels, n_levels, by_slice, morph_mask):
    return _core().texture_zones(levels, n_levels, by_slice, morph_mask, get_num_threads())


def _cpp_ngtdm(levels, n_levels, by_slice, distance):
    return _core().texture_ngtdm(levels, n_levels, by_slice, distance, get_num_threads())


def _cpp_ngldm(levels, n_levels, by_slice, distance, alpha):
    return _core().texture_ngldm(levels, n_levels, by_slice, distance, alpha, get_num_threads())


glcm = Kernel("glcm", cpp=_cpp_glcm, numba="medkern._numba.radiomics:glcm")
glrlm = Kernel("glrlm", cpp=_cpp_glrlm, numba="medkern._numba.radiomics:glrlm")
zones = Kernel("zones", cpp=_cpp_zones, numba="medkern._numba.radiomics:zones")
ngtdm = Kernel("ngtdm", cpp=_cpp_ngtdm, numba="medkern._numba.radiomics:ngtdm")
ngldm = Kernel("ngldm", cpp=_cpp_ngldm, numba="medkern._numba.radiomics:ngldm")


def _cpp_offset_means(image, centres, offsets):
    return _core().offset_means(image, centres, offsets, get_num_threads())


offset_means = Kernel("offset_means", cpp=_cpp_offset_means,
                      numba="medkern._numba.radiomics:offset_means")


def _cpp_max_diameter(lattice, spacing):
    import numpy as np

    length, _, _ = _core().max_diameter(np.ascontiguousarray(lattice, np.int32), list(spacing),
                                        get_num_threads())
    return length


def _cpp_convex_hull(points):
    return _core().convex_hull(points)


max_diameter = Kernel("max_diameter", cpp=_cpp_max_diameter)
convex_hull = Kernel("convex_hull", cpp=_cpp_convex_hull)
