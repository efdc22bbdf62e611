"""CuPy implementations: peers of the CUDA kernels, used when medkern._cuda is unavailable."""
