"""The outlier test that flags a class among the others, shared by the defenses that compare one
statistic per class: Neural Cleanse's anomaly index (Wang et al., S&P'19, Sec. IV-C) over the
mask norms, and ssl_knn's class gate over the net outflows."""

from __future__ import annotations

import math

import torch

MAD_TO_STD = 1.4826  # MAD -> standard deviation for a normal distribution


def mad_anomaly(
    values: torch.Tensor, threshold: float = 2.0, side: str = "low"
) -> tuple[torch.Tensor, list[int], float, float]:
    """(anomaly index per class, flagged classes, median, MAD): index = |value - median| / MAD with
    MAD = 1.4826 x median |value - median| (medians of an even count average the middle two, as
    numpy's); flagged = classes on `side` of the median (`low`: below, `high`: above) with an index
    above `threshold`, the most extreme first. A zero MAD gives index 0 where the value is the
    median, inf elsewhere. (The index is Iglewicz and Hoaglin's modified z-score, 0.6745 x
    deviation / median absolute deviation.)"""
    if side not in ("low", "high"):
        raise ValueError(f"side={side!r}: use low or high")
    values = values.double()
    median = float(torch.quantile(values, 0.5))
    mad = MAD_TO_STD * float(torch.quantile((values - median).abs(), 0.5))
    dev = (values - median).abs()
    index = dev / mad if mad > 0 else torch.where(dev > 0, math.inf, 0.0).double()
    beyond = values < median if side == "low" else values > median
    order = torch.argsort(values, descending=side == "high", stable=True)
    flagged = [int(c) for c in order if beyond[c] and index[c] > threshold]
    return index, flagged, median, mad
