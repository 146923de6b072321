"""The contrastive methods `train.py --method` trains: one module each, one interface (`base.Method`).

METHODS is the only list of methods: train.py's flags, run.sh (`python -m utils.methods list`), the docs'
tables and the tests read it. Adding a method: a module with a `Method` subclass (its flags, data change,
forward and loss), a line in METHODS below, its test in tests/test_methods_<name>.py and its docs rows.
"""

import argparse

from utils.methods.base import Method, Output, TrainingModel
from utils.methods.esimcse import ESimCSE
from utils.methods.infocse import InfoCSE
from utils.methods.mixcse import MixCSE
from utils.methods.promptbert import PromptBERT
from utils.methods.simcse import SimCSE

METHODS = {m.name: m for m in (SimCSE, MixCSE, ESimCSE, PromptBERT, InfoCSE)}

__all__ = ["METHODS", "Method", "Output", "TrainingModel", "add_arguments", "resolve_arguments", "recipe_flags"]


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--method and every method's own flags, each in its method's group. A method flag is left unset here
    when not given, so that one given for another method than the one trained is seen (resolve_arguments)."""
    parser.add_argument("--method", default="simcse", choices=list(METHODS),
                        help="the contrastive objective (docs/methods.md)")
    for method in METHODS.values():
        group = parser.add_argument_group(f"--method {method.name} only")
        for flag, kwargs in method.flags:
            kwargs = dict(kwargs)
            default = kwargs.pop("default")
            group.add_argument(flag, default=argparse.SUPPRESS, **{**kwargs, "help": f"{kwargs['help']} (default: {default})"})


def resolve_arguments(args) -> str | None:
    """Fill the trained method's flags with their defaults and check them; a message naming the flag when
    one belongs to another method or is out of range, else None."""
    method = METHODS[args.method]
    for other in METHODS.values():
        for flag, _ in other.flags:
            if other is not method and hasattr(args, _dest(flag)):
                return f"argument {flag}: belongs to --method {other.name}; this run trains --method {args.method}"
    for other in METHODS.values():  # every method flag is in args: the trained method's set, the others' None
        for flag, kwargs in other.flags:
            if not hasattr(args, _dest(flag)):
                setattr(args, _dest(flag), kwargs["default"] if other is method else None)
    if getattr(args, "rr_on", "mlp") is None:
        args.rr_on = method.rr_default
    return method.check_args(args)


def recipe_flags(name: str) -> list[str]:
    """train.py flags of a method's published recipe for the shared knobs (run.sh): batch, lr, epochs and
    whether the training head is kept at evaluation."""
    flags = ["--method", name]
    for key, value in METHODS[name].recipe.items():
        if isinstance(value, bool):
            flags.append(f"--{key}" if value else f"--no-{key}")
        else:
            flags += [f"--{key}", f"{value:g}" if isinstance(value, float) else str(value)]
    return flags
