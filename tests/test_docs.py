"""The docs keep up with the code: every command-line flag of a script has a row in a flag table of its
docs page, and every relative link in README.md and docs/*.md points to a file (and heading) that exists."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCS = REPO / "docs"

# (command after the interpreter, the page that documents every flag it prints in --help)
COMMANDS = [
    (["train.py"], "train.md"),
    (["evaluate.py"], "evaluate.md"),
    (["analyze_rank.py"], "analyze_rank.md"),
    (["-m", "benchmarks.bench_step"], "speed.md"),
    (["-m", "benchmarks.bench_methods"], "speed.md"),
    (["-m", "benchmarks.bench_encode"], "speed.md"),
    (["-m", "benchmarks.bench_rr_solvers"], "speed.md"),
    (["-m", "benchmarks.bench_memory"], "speed.md"),
    (["-m", "benchmarks.bench_corpus"], "speed.md"),
    (["-m", "benchmarks.bench_transfer"], "speed.md"),
    (["-m", "utils.download", "wiki1m"], "data.md"),
    (["-m", "utils.download", "senteval"], "data.md"),
]


def help_flags(help_text: str) -> set[str]:
    """The option strings (`--foo`) argparse lists in its help, from each option line's invocation part."""
    flags = set()
    for line in help_text.splitlines():
        if re.match(r"^\s{1,8}-", line):
            invocation = re.split(r"\s{2,}", line.strip())[0]
            flags.update(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", invocation))
    flags.discard("--help")
    return flags


def table_flags(page_text: str) -> set[str]:
    """The flags in the `flag` column of the page's tables: a flag counts as documented when it has a
    row of its own (or shares one, `--a` / `--b`), not when it is only mentioned in passing."""
    flags = set()
    lines = strip_code_blocks(page_text).splitlines()
    i = 0
    while i < len(lines):
        if not lines[i].startswith("|"):
            i += 1
            continue
        block = []
        while i < len(lines) and lines[i].startswith("|"):
            block.append([c.strip() for c in re.split(r"(?<!\\)\|", lines[i].strip().strip("|"))])
            i += 1
        if "flag" in block[0]:
            col = block[0].index("flag")
            for row in block[2:]:
                if col < len(row):
                    flags.update(re.findall(r"(?<![\w-])--[A-Za-z][\w-]*", row[col]))
    return flags


def test_help_flags_parser():
    text = """options:
  -h, --help            show this help message and exit
  --mlp_only_train, --no-mlp_only_train
                        `cls` only: see --temp in the text
  --rank-reduction RANK_REDUCTION, --rank_reduction RANK_REDUCTION
  --x X                 a --not_a_flag mention in the help text"""
    assert help_flags(text) == {"--mlp_only_train", "--no-mlp_only_train", "--rank-reduction",
                                "--rank_reduction", "--x"}


def test_table_flags_reads_the_flag_column_only():
    page = """Prose that mentions `--prose_only`.

| name | flag | meaning |
|---|---|---|
| a | `--rr_on` / `--rr_start` | not `--in_meaning` nor `a\\|b` |

| setting | meaning |
|---|---|
| x | `--other_table` |

```
| code | flag |
|---|---|
| y | --in_code |
```"""
    assert table_flags(page) == {"--rr_on", "--rr_start"}


@pytest.mark.parametrize("command,page", COMMANDS, ids=[" ".join(c) for c, _ in COMMANDS])
def test_every_flag_is_on_its_docs_page(command, page):
    proc = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    flags = help_flags(proc.stdout)
    assert len(flags) >= 3, f"no flags parsed from {' '.join(command)} --help:\n{proc.stdout}"
    text = (DOCS / page).read_text(encoding="utf-8")
    missing = sorted(flags - table_flags(text))
    assert not missing, f"docs/{page}: no row in a flag table for these flags of {' '.join(command)}: {missing}"


# ----------------------------------------------------------------------------------------------- links

MARKDOWN = [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def strip_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def anchors(text: str) -> set[str]:
    """GitHub's heading ids: lower case, punctuation dropped, spaces to hyphens, -1, -2 … for repeats."""
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6}\s+(.+?)\s*#*\s*$", strip_code_blocks(text), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[str]:
    text = strip_code_blocks(path.read_text(encoding="utf-8"))
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code is not a link
    return LINK.findall(text)


def test_anchor_slugs_follow_github():
    assert anchors("# Speed\n## Example study (CPU)\n## GPU results (`bench_gpu.sh`)\n## Speed\n") == {
        "speed", "example-study-cpu", "gpu-results-bench_gpush", "speed-1"}
    assert anchors("## Benchmark: `python -m utils.bench`\n```\n# not a heading\n```\n") == {
        "benchmark-python--m-utilsbench"}


@pytest.mark.parametrize("path", MARKDOWN, ids=[str(p.relative_to(REPO)) for p in MARKDOWN])
def test_relative_links_point_to_files_that_exist(path):
    found = links(path)
    assert found or path.name != "README.md", "no links found in README.md: is the link pattern broken?"
    broken = []
    for target in found:
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto: …
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text(encoding="utf-8")):
            broken.append(f"{target} (no such heading in {dest.name})")
    assert not broken, f"{path.relative_to(REPO)}: broken links: {broken}"
