"""``kegnet submit | status | download`` against servers that misbehave, and bad output paths."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from kegnet_cli.client import ClientError, _download, _request, output_path

from .test_offline_cli import kegnet

PAGE = b"<!doctype html><html><head><title>Sign in - Corporate Proxy</title></head><body>...</body></html>"


def client_for(status: int, body: bytes, content_type: str) -> httpx.Client:
    def answer(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, content=body, headers={"content-type": content_type})

    return httpx.Client(base_url="http://kegnet.test", transport=httpx.MockTransport(answer))


def test_an_answer_that_is_not_a_kegnet_servers_is_one_clear_error(tmp_path: Path):
    with client_for(200, PAGE, "text/html") as client, pytest.raises(ClientError, match="not JSON"):
        _request(client, "GET", "/v1/jobs/x")
    with client_for(502, PAGE, "text/html") as client, pytest.raises(ClientError) as refused:
        _request(client, "GET", "/v1/jobs/x")
    assert str(refused.value) == "HTTP 502 Sign in - Corporate Proxy"
    # A download of a web page is refused, and leaves nothing behind.
    with client_for(200, PAGE, "text/html") as client, pytest.raises(ClientError, match="web page"):
        _download(client, "x", "model", tmp_path / "student.pt")
    assert list(tmp_path.iterdir()) == []


def test_a_download_into_a_folder_takes_the_artifacts_name(tmp_path: Path):
    folder = tmp_path / "models"
    folder.mkdir()
    assert output_path(str(folder), "student.pt") == folder / "student.pt"
    assert output_path(str(tmp_path / "new") + "/", "student.pt") == tmp_path / "new" / "student.pt"
    with client_for(200, b"weights", "application/octet-stream") as client:
        assert (
            _download(client, "x", "model", output_path(str(folder), "student.pt")).read_bytes() == b"weights"
        )
    (tmp_path / "afile").write_text("")
    with pytest.raises(ClientError, match="is a file, not a folder"):
        output_path(str(tmp_path / "afile" / "x.pt"), "student.pt")


def test_output_mistakes_are_caught_before_any_job_runs(tiny_cnn: Path, tmp_path: Path):
    (tmp_path / "afile").write_text("")
    common = ("--input-shape", "1,8,8", "--preset", "quick")
    unreachable = ("--url", "http://127.0.0.1:9")
    cases = [
        # The server is never asked: the -o mistake is found first.
        (("submit", str(tiny_cnn), *common, "--wait", "-o", "afile/x.pt", *unreachable), 1, "is a file"),
        (("download", "abc", "-o", "afile/x.pt", *unreachable), 1, "is a file"),
        (("submit", str(tiny_cnn), *common, "--wait", "--interval", "-1", *unreachable), 2, "positive"),
        (
            ("submit", str(tiny_cnn), *common, "--extract", "--task", "quantize", *unreachable),
            2,
            "two different",
        ),
        (("compress", str(tiny_cnn), *common, "-o", "afile/x.pt"), 1, "afile"),
    ]
    for args, code, expected in cases:
        result = kegnet(*args, cwd=tmp_path)
        assert result.returncode == code, (args, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr, (args, result.stderr)
        assert "cannot reach" not in result.stderr, args
    # A model named as one of the run's files beside -o is refused before the run.
    twin = tmp_path / "s_int8.pt"
    twin.write_bytes(tiny_cnn.read_bytes())
    result = kegnet("compress", str(twin), *common, "--quantize", "int8", "-o", "s.pt", cwd=tmp_path)
    assert result.returncode == 2 and "would replace the model" in result.stderr
    assert twin.read_bytes() == tiny_cnn.read_bytes() and not (tmp_path / "s.pt").exists()
