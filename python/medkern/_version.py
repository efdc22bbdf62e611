"""The version of medkern: its one home (the build reads it from here)."""

__version__ = "0.1.0"
