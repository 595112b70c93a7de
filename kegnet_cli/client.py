"""``kegnet submit | jobs | status | download | cancel``: talking to a kegnet server.

Plain HTTP with httpx; no torch, no server code.  The server is ``--url``,
else ``$KEGNET_URL``, else http://127.0.0.1:8000; the key is ``--key``, else
``$KEGNET_API_KEY``, else the key ``kegnet serve`` saved in ``$KEGNET_HOME``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from kegnet_cli.options import add_spec_options, spec_from_args
from kegnet_cli.progress_bar import ProgressBar
from kegnet_core.artifacts import (
    GENERATORS,
    LATENT_WALK,
    REPORT,
    SAMPLES,
    STUDENT,
    STUDENT_INT8,
    STUDENT_INT8_ONNX,
    STUDENT_ONNX,
)
from kegnet_core.progress import ProgressEvent
from kegnet_core.report import Report
from kegnet_service.states import TERMINAL_STATUSES

DEFAULT_URL = "http://127.0.0.1:8000"
# What `kegnet download --what` offers, by the manifest's artifacts.
DOWNLOADS = {
    "model": STUDENT,
    "model_int8": STUDENT_INT8,
    "onnx": STUDENT_ONNX,
    "onnx_int8": STUDENT_INT8_ONNX,
    "report": REPORT,
    "samples": SAMPLES,
    "generators": GENERATORS,
    "latent_walk": LATENT_WALK,
}


class ClientError(Exception):
    """The server said no, or could not be reached."""


def _key(args: argparse.Namespace) -> str | None:
    if args.key:
        return str(args.key)
    if os.environ.get("KEGNET_API_KEY"):
        return os.environ["KEGNET_API_KEY"]
    path = Path(os.environ.get("KEGNET_HOME", ".kegnet")) / "api_key"
    return path.read_text().strip() if path.is_file() else None


def _client(args: argparse.Namespace) -> httpx.Client:
    headers = {}
    key = _key(args)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.Client(
        base_url=args.url.rstrip("/"), headers=headers, timeout=httpx.Timeout(30.0, read=300.0)
    )


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code < 400:
        return response
    try:
        error = response.json()["error"]
        message = f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        message = _gist(response)
    raise ClientError(f"HTTP {response.status_code} {message}")


def _gist(response: httpx.Response) -> str:
    """One line of an answer that is not kegnet's error format: a web page's title, else the
    first line of the text, else the status's reason."""
    text = response.text.strip()
    title = re.search(r"<title[^>]*>([^<]*)</title>", text, re.IGNORECASE)
    line = title.group(1).strip() if title else (text.splitlines()[0] if text else "")
    if line.lstrip().startswith("<"):  # markup without a title
        line = ""
    return " ".join(line.split())[:200] or response.reason_phrase


def _request(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """The server's JSON answer; a ClientError for a refusal, no answer, or an answer that is
    not a kegnet server's (a proxy's login page, another service on that port)."""
    try:
        response = _check(client.request(method, path, **kwargs))
    except httpx.HTTPError as exc:
        raise ClientError(f"cannot reach {client.base_url}: {exc}") from exc
    try:
        return response.json()
    except ValueError:
        kind = response.headers.get("content-type", "no content type")
        raise ClientError(
            f"{client.base_url} answered {path} with {kind}, not JSON: is --url a kegnet server?"
        ) from None


def output_path(output: str | None, default: str) -> Path:
    """Where a download goes: ``output``, or ``default`` inside it where it is a folder (or
    ends in a separator); checked before anything is sent, so a job never runs for nothing."""
    if output is None:
        path = Path(default)
    else:
        path = Path(output)
        if path.is_dir() or output.endswith(("/", os.sep)) or path.name in ("", ".", ".."):
            path = path / Path(default).name
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ClientError(f"cannot write {path}: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK):
                raise ClientError(f"cannot write {path}: {parent} is not writable")
            break
    return path


def _download(client: httpx.Client, job_id: str, what: str, output: Path) -> Path:
    artifact = DOWNLOADS[what]
    partial = output.with_name(f".{output.name}.part")
    done = False
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with client.stream("GET", f"/v1/jobs/{job_id}/{artifact.name}", follow_redirects=True) as response:
            if response.status_code >= 400:
                response.read()
                _check(response)
            kind = response.headers.get("content-type", "")
            if kind.startswith("text/html") and artifact.media_type != kind:
                raise ClientError(
                    f"{client.base_url} sent a web page, not {artifact.file}: is --url a kegnet server?"
                )
            with open(partial, "wb") as handle:
                for chunk in response.iter_bytes():
                    handle.write(chunk)
        partial.replace(output)
        done = True
    except httpx.HTTPError as exc:
        raise ClientError(f"download failed: {exc}") from exc
    except OSError as exc:
        raise ClientError(f"cannot write {output}: {exc.strerror or exc}") from exc
    finally:
        if not done:  # an error, or Ctrl-C: no half file is left behind
            partial.unlink(missing_ok=True)
    return output


def positive_seconds(text: str) -> float:
    """``--interval``: a positive number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number of seconds, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text!r}")
    return value


def _wait(client: httpx.Client, job_id: str, interval: float) -> dict[str, Any]:
    bar = ProgressBar()
    announced = False
    try:
        while True:
            job: dict[str, Any] = _request(client, "GET", f"/v1/jobs/{job_id}")
            if job["status"] in TERMINAL_STATUSES:
                return job
            measured = (job.get("metrics") or {}).get("estimate_s")
            if measured is not None and not announced:
                print(f"\njob {job_id}: estimated {_duration(measured)} on its worker", file=sys.stderr)
                announced = True
            metrics = (job.get("metrics") or {}).get("latest", {})
            if job["stage"]:
                shown = {
                    k: v
                    for k, v in metrics.items()
                    if isinstance(v, (int, float)) and k not in ("step", "total")
                }
                bar(ProgressEvent(job["stage"], round(job["progress"] * 1000), 1000, shown))
            time.sleep(interval)
    finally:
        bar.close()


def _duration(seconds: float) -> str:
    """``125.0`` -> ``"2 min 5 s"``."""
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s" if minutes else f"{rest} s"


def submit(args: argparse.Namespace) -> int:
    from kegnet_cli.offline import summary_lines

    if args.extract and args.task not in ("compress", "extract"):
        print(f"kegnet submit: --extract and --task {args.task} ask for two different jobs", file=sys.stderr)
        return 2
    task = "extract" if args.extract else args.task
    spec = spec_from_args(args, task)
    if task == "quantize" and spec["quantize"] == "none":  # the option's default: a quantize job is int8
        spec["quantize"] = "int8"
    model = Path(args.model)
    if not model.is_file():
        print(f"kegnet submit: no such file: {model}", file=sys.stderr)
        return 2
    what, default = {
        "extract": ("generators", f"{model.stem}_generators.zip"),
        "quantize": ("model_int8", f"{model.stem}_int8.pt"),
    }.get(task, ("model", f"{model.stem}_student.pt"))
    output = output_path(args.output, default) if args.wait else None
    with _client(args) as client:
        headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
        with open(model, "rb") as handle:
            files = {"model": (model.name, handle, "application/octet-stream")}
            job = _request(
                client, "POST", "/v1/jobs", files=files, data={"spec": json.dumps(spec)}, headers=headers
            )
        budget = job["spec"].get("budget_s")
        within = f", to end within {_duration(budget)}" if budget is not None else ""
        print(f"job {job['id']} {job['status']}{within}", file=sys.stderr)
        if output is None:
            print(job["id"])
            return 0
        job = _wait(client, job["id"], args.interval)
        if job["status"] != "succeeded":
            error = job.get("error") or {}
            why = f"{error.get('code', '')}: {error.get('message', '')}" if error else "no error was given"
            print(f"job {job['id']} {job['status']}: {why}", file=sys.stderr)
            return 1
        output = _download(client, job["id"], what, output)
        if task == "compress" and "model_int8" in job.get("links", {}):  # --quantize int8: both students
            int8 = _download(client, job["id"], "model_int8", output.with_name(f"{output.stem}_int8.pt"))
            print(f"wrote {int8}")
        report_path = output.with_name(f"{output.stem}_report.json")
        report_path.write_text(json.dumps(job["report"], indent=2))
        for line in summary_lines(Report.model_validate(job["report"])):
            print(line)
        print(f"wrote {output} and {report_path}")
    return 0


def list_jobs(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"limit": args.limit}
    if args.status:
        params["status"] = args.status
    with _client(args) as client:
        page = _request(client, "GET", "/v1/jobs", params=params)
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(f"{'id':<34}{'status':<11}{'stage':<13}{'progress':>9}  {'ratio':>7}  model")
    for job in page["items"]:
        ratio = (job.get("report") or {}).get("compression_ratio")
        print(
            f"{job['id']:<34}{job['status']:<11}{job['stage'] or '-':<13}{job['progress'] * 100:8.1f}%"
            f"  {f'{ratio:.2f}x' if ratio else '-':>7}  {job['model_name']}"
        )
    print(f"{page['total']} job(s)", file=sys.stderr)
    return 0


def status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = _request(client, "GET", f"/v1/jobs/{args.job_id}")
    print(json.dumps(job, indent=2))
    return 0


def download(args: argparse.Namespace) -> int:
    with _client(args) as client:
        output = _download(
            client, args.job_id, args.what, output_path(args.output, DOWNLOADS[args.what].file)
        )
    print(f"wrote {output}")
    return 0


def cancel(args: argparse.Namespace) -> int:
    with _client(args) as client:
        job = _request(client, "POST", f"/v1/jobs/{args.job_id}/cancel")
    print(f"job {job['id']} {job['status']}{' (cancel requested)' if job['status'] == 'running' else ''}")
    return 0


def _connection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=os.environ.get("KEGNET_URL", DEFAULT_URL), help="the kegnet server")
    parser.add_argument("--key", help="API key (default $KEGNET_API_KEY or $KEGNET_HOME/api_key)")


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit_parser = commands.add_parser("submit", help="upload a model to a kegnet server")
    submit_parser.add_argument("model", help="the teacher: a TorchScript file")
    add_spec_options(submit_parser)
    submit_parser.add_argument(
        "--task",
        choices=["compress", "extract", "quantize"],
        default="compress",
        help="compress (default); extract: train generators only; "
        "quantize: an int8 copy of the model, no Tucker",
    )
    submit_parser.add_argument("--extract", action="store_true", help="the same as --task extract")
    submit_parser.add_argument("--wait", action="store_true", help="follow the job, then download the result")
    submit_parser.add_argument("-o", "--output", help="where --wait saves the result")
    submit_parser.add_argument("--interval", type=positive_seconds, default=1.0, help="seconds between polls")
    submit_parser.add_argument("--idempotency-key", help="retrying with the same key returns the same job")
    _connection_options(submit_parser)
    submit_parser.set_defaults(handler=submit)

    jobs_parser = commands.add_parser("jobs", help="list your jobs")
    jobs_parser.add_argument("--status", action="append", help="only jobs in this status (repeatable)")
    jobs_parser.add_argument("--limit", type=int, default=20)
    jobs_parser.add_argument("--json", action="store_true")
    _connection_options(jobs_parser)
    jobs_parser.set_defaults(handler=list_jobs)

    status_parser = commands.add_parser("status", help="show one job")
    status_parser.add_argument("job_id")
    _connection_options(status_parser)
    status_parser.set_defaults(handler=status)

    download_parser = commands.add_parser("download", help="download a finished job's result")
    download_parser.add_argument("job_id")
    download_parser.add_argument("--what", choices=list(DOWNLOADS), default="model")
    download_parser.add_argument("-o", "--output")
    _connection_options(download_parser)
    download_parser.set_defaults(handler=download)

    cancel_parser = commands.add_parser("cancel", help="cancel a job")
    cancel_parser.add_argument("job_id")
    _connection_options(cancel_parser)
    cancel_parser.set_defaults(handler=cancel)
