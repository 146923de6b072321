"""The contrastive methods `train.py --method` trains: one module each, one interface (`base.Method`).

Adding a method: a module with a `Method` subclass (its flags, data change, forward and loss), a line in
METHODS below, and its test in tests/test_methods_<name>.py.
"""

from utils.methods.base import Method, Output, TrainingModel
from utils.methods.esimcse import ESimCSE
from utils.methods.infocse import InfoCSE
from utils.methods.mixcse import MixCSE
from utils.methods.promptbert import PromptBERT
from utils.methods.simcse import SimCSE

METHODS = {m.name: m for m in (SimCSE, MixCSE, ESimCSE, PromptBERT, InfoCSE)}

__all__ = ["METHODS", "Method", "Output", "TrainingModel"]


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
