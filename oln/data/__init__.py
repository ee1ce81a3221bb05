"""Datasets: COCO-format loading, category splits, the synthetic open-world set."""
