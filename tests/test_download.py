"""utils/download.py against a local HTTP server on 127.0.0.1 (no internet)."""

import functools
import hashlib
import http.server
import io
import socket
import tarfile
import threading

import pytest

from utils.download import main

TEXT = b"YMCA in South Australia\nSouth Australia (SA) has a unique position in Australia's history.\n" * 50


class CountingHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and records every requested path in `self.requests`."""

    def __init__(self, *args, requests, **kwargs):
        self.requests = requests
        super().__init__(*args, **kwargs)

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(root folder, base URL, list of requested paths) for a server shut down after the test."""
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")  # a proxy from the environment must not see loopback
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    requests = []
    handler = functools.partial(CountingHandler, directory=str(root), requests=requests)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}", requests
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=2)


def make_tar(path, files, extra=()):
    """Write a tar holding `files` ({member name: bytes}) plus any prebuilt TarInfo in `extra`."""
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


SENTEVAL_FILES = {
    "STS/STSBenchmark/sts-dev.csv": b"main-captions\tMSRvid\t2012test\t0000\t5.000\ta man.\ta man.\n",
    "SICK/SICK_trial.txt": b"pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n",
}


def test_wiki1m_downloads_verifies_and_places_atomically(server, tmp_path, capsys):
    root, base, _ = server
    (root / "wiki1m_for_simcse.txt").write_bytes(TEXT)
    digest = hashlib.sha256(TEXT).hexdigest()
    out = tmp_path / "data"
    assert main(["wiki1m", "--out_dir", str(out), "--url", f"{base}/wiki1m_for_simcse.txt", "--sha256", digest]) == 0
    assert (out / "wiki1m_for_simcse.txt").read_bytes() == TEXT
    assert sorted(p.name for p in out.iterdir()) == ["wiki1m_for_simcse.txt", "wiki1m_for_simcse.txt.sha256"]
    sidecar = (out / "wiki1m_for_simcse.txt.sha256").read_text()
    assert f"{digest}  wiki1m_for_simcse.txt" in sidecar and f"# {len(TEXT)} bytes" in sidecar
    assert digest in capsys.readouterr().out


def test_checksum_mismatch_leaves_nothing(server, tmp_path, capsys):
    root, base, _ = server
    (root / "wiki1m_for_simcse.txt").write_bytes(TEXT)
    out = tmp_path / "data"
    # No --sha256: a mirror serving other bytes fails against the built-in digest of the real file.
    assert main(["wiki1m", "--out_dir", str(out), "--url", f"{base}/wiki1m_for_simcse.txt"]) != 0
    err = capsys.readouterr().err
    assert "sha256 mismatch" in err and hashlib.sha256(TEXT).hexdigest() in err and "7b1825863a99" in err
    assert list(out.iterdir()) == []


def test_http_404_is_one_clean_line_and_keeps_existing_file(server, tmp_path, capsys):
    _, base, _ = server
    out = tmp_path / "data"
    out.mkdir()
    (out / "wiki1m_for_simcse.txt").write_bytes(b"old")  # mismatches the digest, so a fetch is attempted
    url = f"{base}/missing.txt"
    assert main(["wiki1m", "--out_dir", str(out), "--url", url, "--sha256", "0" * 64]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and url in err[0] and "404" in err[0] and "--url" in err[0]
    assert sorted(p.name for p in out.iterdir()) == ["wiki1m_for_simcse.txt"]
    assert (out / "wiki1m_for_simcse.txt").read_bytes() == b"old"


def test_unreachable_host_names_the_url(tmp_path, capsys):
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens, connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/wiki1m_for_simcse.txt"
    assert main(["wiki1m", "--out_dir", str(tmp_path), "--url", url, "--no-verify"]) != 0
    err = capsys.readouterr().err
    assert url in err and "--url" in err
    assert list(tmp_path.iterdir()) == []


def test_senteval_tar_extracts_into_downstream(server, tmp_path):
    root, base, _ = server
    make_tar(root / "senteval.tar", SENTEVAL_FILES)
    data = tmp_path / "SentEval" / "data"
    assert main(["senteval", "--data_dir", str(data), "--url", f"{base}/senteval.tar"]) == 0
    for name, content in SENTEVAL_FILES.items():
        assert (data / "downstream" / name).read_bytes() == content
    assert sorted(p.name for p in (data / "downstream").iterdir()) == ["SICK", "STS"]
    assert not [p for p in data.iterdir() if p.name.startswith(".")]  # temp folder cleaned up
    assert (data / "senteval.tar.sha256").is_file()


@pytest.mark.parametrize("bad", ["../evil", "/tmp/evil_abs", "link"])
def test_unsafe_tar_member_is_refused(server, tmp_path, capsys, bad):
    root, base, _ = server
    extra = tarfile.TarInfo(bad)
    if bad == "link":
        extra.type, extra.linkname = tarfile.SYMTYPE, "../../outside"
    else:
        extra.size = 1
    make_tar(root / "senteval.tar", SENTEVAL_FILES, extra=[extra])
    data = tmp_path / "data"
    assert main(["senteval", "--data_dir", str(data), "--url", f"{base}/senteval.tar"]) != 0
    assert "unsafe member" in capsys.readouterr().err
    assert not (tmp_path / "evil").exists() and not (data / "downstream").exists()
    assert not (data / "senteval.tar").exists() and not (data / "senteval.tar.part").exists()


def test_existing_task_folder_needs_force(server, tmp_path, capsys):
    root, base, _ = server
    make_tar(root / "senteval.tar", SENTEVAL_FILES)
    data = tmp_path / "data"
    mine = data / "downstream" / "STS" / "mine.txt"
    mine.parent.mkdir(parents=True)
    mine.write_text("keep me")
    args = ["senteval", "--data_dir", str(data), "--url", f"{base}/senteval.tar"]
    assert main(args) == 0
    assert mine.read_text() == "keep me" and not (data / "downstream" / "STS" / "STSBenchmark").exists()
    assert (data / "downstream" / "SICK" / "SICK_trial.txt").is_file()
    assert "--force" in capsys.readouterr().out
    assert main(args + ["--force"]) == 0
    assert not mine.exists() and (data / "downstream" / "STS" / "STSBenchmark" / "sts-dev.csv").is_file()
    assert sorted(p.name for p in (data / "downstream").iterdir()) == ["SICK", "STS"]  # no .old left


def test_complete_targets_are_not_downloaded_again(server, tmp_path):
    root, base, requests = server
    (root / "wiki1m_for_simcse.txt").write_bytes(TEXT)
    make_tar(root / "senteval.tar", SENTEVAL_FILES)
    digest = hashlib.sha256(TEXT).hexdigest()
    wiki = ["wiki1m", "--out_dir", str(tmp_path), "--url", f"{base}/wiki1m_for_simcse.txt", "--sha256", digest]
    sent = ["senteval", "--data_dir", str(tmp_path), "--url", f"{base}/senteval.tar"]  # checked via its .sha256
    for _ in range(2):
        assert main(wiki) == 0 and main(sent) == 0
    assert requests == ["/wiki1m_for_simcse.txt", "/senteval.tar"]
    (tmp_path / "wiki1m_for_simcse.txt").write_bytes(b"corrupted")  # no longer matches: fetched again
    assert main(wiki) == 0 and (tmp_path / "wiki1m_for_simcse.txt").read_bytes() == TEXT
    assert len(requests) == 3
