"""Datasets as whole uint8 tensors (see docs/architecture.md)."""

from backdoor_bench.data.imageset import ImageSet, load_dataset

__all__ = ["ImageSet", "load_dataset"]
