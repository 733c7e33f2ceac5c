"""Datasets as whole uint8 tensors (DESIGN.md section 2, Data)."""

from backdoor_bench.data.imageset import ImageSet, load_dataset

__all__ = ["ImageSet", "load_dataset"]
