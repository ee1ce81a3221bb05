"""Affinity map -> ranked mask proposals (GGN grouping)."""

from oln.grouping.proposals import GroupingOptions, affinity_to_proposals
from oln.grouping.ranking import RANK_METHODS

__all__ = ["GroupingOptions", "affinity_to_proposals", "RANK_METHODS"]
