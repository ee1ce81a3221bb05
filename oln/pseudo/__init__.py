"""Pseudo ground truth: extraction of ranked masks per image, merge with annotated GT."""

from oln.pseudo.extract import ExtractOptions, extract_shard
from oln.pseudo.merge import MergeOptions, merge_pseudo

__all__ = ["ExtractOptions", "MergeOptions", "extract_shard", "merge_pseudo"]
