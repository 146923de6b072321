"""`python -m utils.methods recipe NAME`: the method's published recipe as train.py flags (run.sh reads it)."""

import argparse

from utils.methods import METHODS, recipe_flags

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("command", choices=["recipe"])
parser.add_argument("name", choices=list(METHODS))
args = parser.parse_args()
print(" ".join(recipe_flags(args.name)))
