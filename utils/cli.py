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
