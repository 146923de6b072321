"""argparse value types that reject out-of-range numbers with a message naming the flag."""

import argparse
import math


def number(kind, low, inclusive: bool = True):
    """A `type=` for argparse: `kind(text)`, finite, and >= low (or > low when not inclusive)."""
    def check(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if (kind is float and not math.isfinite(value)) or not (value >= low if inclusive else value > low):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {low}, got {text}")
        return value
    return check


def seed_number(text):
    """A `type=` for --seed: an integer in [0, 2**32), the range numpy's and torch's seeding accept."""
    value = number(int, 0)(text)
    if value >= 2**32:
        raise argparse.ArgumentTypeError(f"must be < 2**32, got {text}")
    return value
