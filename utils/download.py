"""Fetch SimCSE's training text and SentEval's data, as SimCSE's own download scripts do.

    python -m utils.download wiki1m --out_dir data        # -> data/wiki1m_for_simcse.txt
    python -m utils.download senteval --data_dir data     # -> data/downstream/{STS,SICK,MR,CR,...}

Same files as SimCSE's `data/download_wiki.sh` and `SentEval/data/downstream/download_dataset.sh`
(wget, then `tar xvf`), but each download streams to `<name>.part`, is sha256-checked, and only then
is moved into place with `os.replace`: an interrupted run never leaves a partial file under the final
name. A target already there with the right checksum is not fetched again. `--url` points at a
mirror; `--sha256 HEX` sets the expected digest, `--no-verify` skips the built-in one. Every download
records its digest and size in `<file>.sha256` (`sha256sum -c` reads it).
"""

import argparse
import hashlib
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

from tqdm import tqdm

HF = "https://huggingface.co/datasets/princeton-nlp/datasets-for-simcse/resolve/main/"
WIKI1M_URL, SENTEVAL_URL = HF + "wiki1m_for_simcse.txt", HF + "senteval.tar"
# Git LFS details on huggingface.co/datasets/princeton-nlp/datasets-for-simcse/blob/
# d0065b9a050f8aa53170ab639f5a1f3c643fa9ef/wiki1m_for_simcse.txt (commit "init", 120 MB); the file is
# unchanged since, up to main (e145e8b).
WIKI1M_SHA256 = "7b1825863a99aa76479b0456f7c210539dfaeeb69598b41fb4de4f524dd5a706"
# No published digest found for main's senteval.tar (e145e8b, 89.8 MB): the one on the Hub pages is for
# the superseded 278e782 upload (92.5 MB). So by default it is computed and recorded, not checked.
SENTEVAL_SHA256 = None
CHUNK = 1 << 20


class DownloadError(Exception):
    """A failure worth one line to the user: bad URL, wrong checksum, unsafe archive."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def recorded_sha256(path: Path):
    """The digest in `<path>.sha256` written by an earlier download, or None."""
    sidecar = path.with_name(path.name + ".sha256")
    if not sidecar.is_file():
        return None
    lines = [line for line in sidecar.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return lines[0].split()[0].lower() if lines else None


def download(url: str, dest: Path, sha256=None, check=None) -> Path:
    """Stream `url` to `dest` atomically, verifying `sha256` (hex) when given.

    Skips the download when `dest` already matches `sha256` (or, without one, the digest recorded
    beside it). `check(part_path)` may raise DownloadError to reject the file before it is placed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        want = sha256 or recorded_sha256(dest)
        if want is None:
            print(f"{dest} exists (no checksum to check it against): not downloading again")
            return dest
        got = sha256_file(dest)
        if got == want:
            print(f"{dest} already complete (sha256 {got})")
            return dest
        print(f"{dest} has sha256 {got}, expected {want}: downloading again")
    part = dest.with_name(dest.name + ".part")
    h, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=60) as resp, open(part, "wb") as out:
            total = resp.headers.get("Content-Length")
            with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                      unit_divisor=1024, desc=dest.name) as bar:
                for block in iter(lambda: resp.read(CHUNK), b""):
                    out.write(block)
                    h.update(block)
                    size += len(block)
                    bar.update(len(block))
        got = h.hexdigest()
        if sha256 and got != sha256:
            raise DownloadError(f"sha256 mismatch for {url}: expected {sha256}, got {got}")
        if check:
            check(part)
    except OSError as e:  # URLError, HTTPError, timeouts, resets and disk errors are all OSErrors
        part.unlink(missing_ok=True)
        raise DownloadError(f"could not download {url} ({e}); pass --url to use a mirror") from e
    except BaseException:  # including Ctrl-C: never leave the .part behind
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    sidecar = dest.with_name(dest.name + ".sha256.part")
    sidecar.write_text(f"# {size} bytes from {url}\n{got}  {dest.name}\n")
    os.replace(sidecar, dest.with_name(dest.name + ".sha256"))
    note = "verified" if sha256 else "not verified: no known digest; recorded in " + dest.name + ".sha256"
    print(f"{dest}: {size} bytes, sha256 {got} ({note})")
    return dest


def check_tar(path: Path) -> None:
    """Refuse archives with absolute paths, `..`, links pointing outside, or device files."""
    try:
        with tarfile.open(path) as tar:
            members = tar.getmembers()
    except tarfile.TarError as e:
        raise DownloadError(f"{path} is not a readable tar archive ({e})") from e
    for m in members:
        name = Path(m.name)
        bad = name.is_absolute() or ".." in name.parts or not (m.isfile() or m.isdir() or m.issym() or m.islnk())
        if m.issym() or m.islnk():
            target = Path(m.linkname) if m.islnk() else name.parent / m.linkname
            bad = bad or target.is_absolute() or ".." in Path(os.path.normpath(target)).parts
        if bad:
            raise DownloadError(f"refusing unsafe member {m.name!r} in {path.name}")


def install_senteval(tar_path: Path, data_dir: Path, force: bool = False) -> list:
    """Extract SentEval's tar into `data_dir/downstream/`, one top-level task folder at a time.

    Existing task folders are kept (with a message) unless `force`, which swaps the new one in
    atomically and then deletes the old one. Returns the names that were installed.
    """
    check_tar(tar_path)
    downstream = data_dir / "downstream"
    downstream.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".senteval-", dir=data_dir))  # same filesystem: os.replace works
    installed = []
    try:
        with tarfile.open(tar_path) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp, filter="data")
            else:  # Python without PEP 706: check_tar above is the only guard
                tar.extractall(tmp)
        for entry in sorted(tmp.iterdir()):
            dest = downstream / entry.name
            if dest.exists() and not force:
                print(f"skip {dest}: already exists (use --force to replace it)")
                continue
            old = downstream / f".{entry.name}.old"
            shutil.rmtree(old, ignore_errors=True)  # left over from a run killed mid-swap
            if dest.exists():
                os.replace(dest, old)
            os.replace(entry, dest)
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
            installed.append(entry.name)
    except tarfile.TarError as e:
        raise DownloadError(f"could not extract {tar_path.name} ({e})") from e
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"installed into {downstream}: {', '.join(installed) or 'nothing new'}")
    return installed


def main(argv=None) -> int:
    """CLI entry point; returns the exit code (0 on success, 1 on a DownloadError)."""
    p = argparse.ArgumentParser(prog="python -m utils.download", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="what", required=True)
    wiki = sub.add_parser("wiki1m", help="SimCSE's 1M Wikipedia sentences (unsupervised training text)")
    wiki.add_argument("--out_dir", default="data", help="folder for wiki1m_for_simcse.txt")
    sent = sub.add_parser("senteval", help="SentEval's data (SimCSE's senteval.tar) into DIR/downstream/")
    sent.add_argument("--data_dir", default="data", help="SentEval data folder; tasks land in DIR/downstream/")
    sent.add_argument("--force", action="store_true", help="replace task folders that already exist")
    for sp in (wiki, sent):
        sp.add_argument("--url", help="download from this URL instead (a mirror)")
        group = sp.add_mutually_exclusive_group()
        group.add_argument("--sha256", help="expected sha256 (hex) of the downloaded file")
        group.add_argument("--no-verify", action="store_true", help="skip the built-in checksum")
    args = p.parse_args(argv)
    default_url, default_sha = (WIKI1M_URL, WIKI1M_SHA256) if args.what == "wiki1m" else (SENTEVAL_URL, SENTEVAL_SHA256)
    sha = args.sha256.lower() if args.sha256 else (None if args.no_verify else default_sha)
    try:
        if args.what == "wiki1m":
            download(args.url or default_url, Path(args.out_dir) / "wiki1m_for_simcse.txt", sha)
        else:
            data_dir = Path(args.data_dir)
            tar_path = download(args.url or default_url, data_dir / "senteval.tar", sha, check=check_tar)
            install_senteval(tar_path, data_dir, force=args.force)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
