"""oln: open-world instance segmentation (GGN + OLN) as a reproducible pipeline."""

__version__ = "0.1.0"
