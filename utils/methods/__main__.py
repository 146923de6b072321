"""`python -m utils.methods list`: the method names; `python -m utils.methods recipe NAME`: the method's
published recipe as train.py flags (run.sh reads both)."""

import argparse

from utils.methods import METHODS, recipe_flags

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("command", choices=["list", "recipe"])
parser.add_argument("name", nargs="?", choices=list(METHODS))
args = parser.parse_args()
if args.command == "list":
    print(" ".join(METHODS))
elif args.name is None:
    parser.error("recipe needs a method name")
else:
    print(" ".join(recipe_flags(args.name)))
