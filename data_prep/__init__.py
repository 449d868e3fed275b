"""Partial-response preference pairs for SP-PRM: loaders, TLT/SST truncation, reference weights."""

from sp_prm import __version__

__all__ = ["__version__"]
