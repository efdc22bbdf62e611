"""Texture-matrix kernels (C++/OpenMP, cpp/include/medkern/texture.hpp) behind the dispatch table.

Every kernel takes the discretised ROI as an int32 volume ``levels`` (0 outside the ROI intensity
mask, 1..n_levels inside); ``by_slice`` restricts neighbourhoods to planes of array axis 0.
"""

from __future__ import annotations

from medkern._dispatch import Kernel

glcm = Kernel("glcm", cpp="texture_glcm", numba="medkern._numba.radiomics:glcm")
glrlm = Kernel("glrlm", cpp="texture_glrlm", numba="medkern._numba.radiomics:glrlm")
zones = Kernel("zones", cpp="texture_zones", numba="medkern._numba.radiomics:zones")
ngtdm = Kernel("ngtdm", cpp="texture_ngtdm", numba="medkern._numba.radiomics:ngtdm")
ngldm = Kernel("ngldm", cpp="texture_ngldm", numba="medkern._numba.radiomics:ngldm")
offset_means = Kernel("offset_means", cpp="offset_means", numba="medkern._numba.radiomics:offset_means")
# The hull is single-threaded: its binding takes no thread count, so it is named as a plain
# function rather than as a binding.
convex_hull = Kernel("convex_hull", cpp="medkern._core:convex_hull")
