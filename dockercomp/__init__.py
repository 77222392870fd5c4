"""dockercomp: volunteer computing on Docker."""

__version__ = "0.1.0"
