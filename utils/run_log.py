"""The run's record on disk: `metrics.jsonl` (one JSON object per event) and `summary.json`."""

import json
import math
import os
import platform


def json_safe(obj):
    """NaN / inf -> None, recursively: strict JSON (jq, JavaScript) rejects them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json_atomic(path: str, obj, **dump_kwargs) -> None:
    """Write strict JSON to `path` through a temporary file and a rename: never a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(json_safe(obj), f, allow_nan=False, **dump_kwargs)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class MetricsLog:
    """Append-only JSON-lines log, flushed per record so a killed run keeps everything it logged."""

    def __init__(self, path: str):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")

    def read(self) -> list[dict]:
        """The records; a last line cut short by a kill is skipped (it would fail to parse)."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1 or line.endswith("\n"):
                    raise ValueError(f"{self.path} line {i + 1} is not JSON: {line[:80]!r}") from None
        return records

    def truncate_after(self, step: int) -> int:
        """On resume: keep the records up to `step`; later ones (from the killed run, which the resumed
        run will write again) move to `metrics.discarded.jsonl` rather than being deleted."""
        if not os.path.exists(self.path):
            return 0
        records = self.read()
        keep = [r for r in records if r.get("step", 0) <= step]
        later = [r for r in records if r.get("step", 0) > step]
        with open(self.path) as f:
            complete = f.read().endswith("\n")
        if later or not complete:
            with open(self.path.replace(".jsonl", ".discarded.jsonl"), "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in later)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
            os.replace(tmp, self.path)
        return len(later)


def versions() -> dict:
    """Library versions worth recording next to results."""
    import accelerate
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}
