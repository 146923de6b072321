"""analyze_rank.py's measurements kept in its --out folder, so a later analysis into the same folder (run.sh after
each added seed or method) measures only the checkpoints it has not measured yet.

One JSON line per measurement of a checkpoint: its key, the checkpoint it was taken of, and the values. The key
is a digest of everything the values depend on: the weights (utils.runs.weights_fingerprint), the embedding
they are read with, the token limit, the part (scores or probing) and the evaluation data and settings. Lines
are appended as they are measured, so an interrupted analysis keeps what it measured; a line cut short is
ignored. Delete the file to measure everything again.
"""

import hashlib
import json
import os

FILE = "measurements.jsonl"


def _plain(obj):
    """JSON's fallback for what it cannot write: arrays and tensors as lists, objects by their fields."""
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dict__"):
        return vars(obj)
    return repr(obj)


def digest(obj) -> str:
    """sha256 of `obj`'s content (lists, dicts, tuples, arrays and plain objects, in order)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_plain).encode()).hexdigest()


class MeasurementStore:
    """The measurements of earlier analyses into `folder` (`get`), and this one's, appended as taken (`put`)."""

    def __init__(self, folder: str):
        self.path = os.path.join(folder, FILE)
        self.values, self.cut_short = {}, False
        if os.path.isfile(self.path):
            with open(self.path) as f:
                text = f.read()
            self.cut_short = bool(text) and not text.endswith("\n")
            for line in text.splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:  # a line cut short by an interrupted analysis
                    continue
                if isinstance(entry, dict) and isinstance(entry.get("values"), dict):
                    self.values[entry.get("key")] = entry["values"]

    def get(self, key: str) -> dict | None:
        return self.values.get(key)

    def put(self, key: str, values: dict, checkpoint: str) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a") as f:
            if self.cut_short:  # the cut line ends here, so this one starts a line of its own
                f.write("\n")
                self.cut_short = False
            f.write(json.dumps({"key": key, "checkpoint": checkpoint, "values": values}) + "\n")
        self.values[key] = values
