import argparse

import pytest

from utils.cli import number


def test_number_accepts_values_in_range():
    assert number(int, 1)("3") == 3
    assert number(float, 0, inclusive=False)("1e-5") == 1e-5
    assert number(float, 0)("0") == 0.0


@pytest.mark.parametrize("kind, low, inclusive, text, words", [
    (int, 1, True, "0", ">= 1"), (float, 0, False, "0", "> 0"), (float, 0, False, "nan", "> 0"),
    (float, 0, True, "inf", ">= 0"), (int, 1, True, "2.5", "not an integer"), (float, 0, True, "x", "not a number"),
])
def test_number_rejects_with_a_reason(kind, low, inclusive, text, words):
    with pytest.raises(argparse.ArgumentTypeError, match=words):
        number(kind, low, inclusive)(text)
