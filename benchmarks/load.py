"""Load test of the HTTP API over loopback: concurrent clients submit jobs and poll them.

Starts ``kegnet serve`` with a fresh ``KEGNET_HOME`` (or uses ``--url``), then
for ``--seconds`` runs ``--clients`` concurrent clients; each submits
``--jobs-per-client`` small jobs (quick preset) and then polls their status.
Reports submit and poll throughput and latency percentiles, then checks that
every submitted job exists exactly once (none lost, none duplicated) and
cancels what is still queued.

Polls are either closed-loop (each client polls as fast as the server
answers) or, with ``--rate``, open-loop: polls are sent at that many per
second in all, on a schedule that does not wait for answers, and each
latency counts from the moment its poll was due (so a stalled server shows as
latency, not as fewer polls).  Open-loop polls use a lean HTTP/1.1 client on
keep-alive connections, so the load generator's own CPU does not crowd the
server on a small machine.

    python benchmarks/load.py --clients 16 --seconds 30
    python benchmarks/load.py --clients 16 --seconds 30 --rate 500
    python benchmarks/load.py --rate 500 --database-url postgresql+psycopg://... --broker-url redis://...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import io
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.docs_section import write_section  # noqa: E402


@dataclass
class Tally:
    submit_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    job_ids: list[str] = field(default_factory=list)
    poll_seconds: float = 0.0  # open-loop: how long the polling ran (submissions excluded)

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def tiny_model() -> bytes:
    import torch

    from tests.core.models import TinyCNN, torchscript_bytes

    torch.manual_seed(0)
    return torchscript_bytes(TinyCNN(), (1, 8, 8))


async def client_loop(
    url: str, key: str, model: bytes, jobs: int, deadline: float, tally: Tally, index: int, poll: bool = True
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as client:
        mine: list[str] = []
        for number in range(jobs):
            started = time.perf_counter()
            try:
                response = await client.post(
                    "/v1/jobs",
                    files={"model": ("tiny.pt", io.BytesIO(model))},
                    data={"spec": json.dumps({"input_shape": [1, 8, 8], "preset": "quick"})},
                    headers={"Idempotency-Key": f"load-{index}-{number}"},
                )
            except httpx.HTTPError as exc:
                tally.error(type(exc).__name__)
                continue
            tally.submit_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code in (200, 202):
                mine.append(response.json()["id"])
            else:
                tally.error(f"submit {response.status_code}")
        tally.job_ids.extend(mine)
        turn = 0
        while poll and mine and time.monotonic() < deadline:
            job_id = mine[turn % len(mine)]
            turn += 1
            started = time.perf_counter()
            try:
                response = await client.get(f"/v1/jobs/{job_id}")
            except httpx.HTTPError as exc:
                tally.error(type(exc).__name__)
                continue
            tally.poll_ms.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                tally.error(f"poll {response.status_code}")


class Connection:
    """One keep-alive HTTP/1.1 connection that sends GETs and reads whole answers (lean on CPU)."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port, self.key = host, port, key
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str) -> int:
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Authorization: Bearer {self.key}\r\nAccept: application/json\r\n\r\n"
        )
        self.writer.write(request.encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(OSError):
                await self.writer.wait_closed()


async def open_loop_polls(
    url: str, key: str, job_ids: list[str], rate: float, connections: int, deadline: float, tally: Tally
) -> None:
    """Send ``rate`` polls a second in all, each on its schedule, over a pool of connections;
    a poll's latency counts from when it was due."""
    parsed = httpx.URL(url)
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(parsed.host, parsed.port or 80, key))
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[None]] = set()

    async def one(job_id: str, due: float) -> None:
        connection = await pool.get()
        try:
            status = await connection.get(f"/v1/jobs/{job_id}")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            tally.error(type(exc).__name__)
            await connection.close()
            pool.put_nowait(Connection(parsed.host, parsed.port or 80, key))
            return
        tally.poll_ms.append((loop.time() - due) * 1000)
        pool.put_nowait(connection)
        if status != 200:
            tally.error(f"poll {status}")

    start = loop.time()
    number = 0
    while job_ids and time.monotonic() < deadline:
        due = start + number / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(job_ids[number % len(job_ids)], due))
        pending.add(task)
        task.add_done_callback(pending.discard)
        number += 1
    if pending:
        await asyncio.gather(*pending)
    tally.poll_seconds = loop.time() - start
    while not pool.empty():
        await pool.get_nowait().close()


def check_jobs(url: str, key: str, submitted: list[str]) -> tuple[dict[str, int], int, int]:
    """Statuses, lost and duplicated counts of the submitted jobs; cancel what is still queued."""
    headers = {"Authorization": f"Bearer {key}"}
    listed: list[str] = []
    statuses: dict[str, int] = {}
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        offset = 0
        while True:
            page = client.get("/v1/jobs", params={"limit": 200, "offset": offset}).json()
            listed += [job["id"] for job in page["items"]]
            for job in page["items"]:
                statuses[job["status"]] = statuses.get(job["status"], 0) + 1
            offset += len(page["items"])
            if offset >= page["total"] or not page["items"]:
                break
        for job_id in submitted:
            client.post(f"/v1/jobs/{job_id}/cancel")
    duplicated = len(listed) - len(set(listed)) + len(submitted) - len(set(submitted))
    lost = len(set(submitted) - set(listed))
    return statuses, lost, duplicated


def start_server(
    home: Path, database_url: str | None, broker_url: str | None
) -> tuple[subprocess.Popen[bytes], str, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {key: value for key, value in os.environ.items() if not key.startswith("KEGNET_")}
    env["KEGNET_HOME"] = str(home)
    if database_url:
        env["KEGNET_DATABASE_URL"] = database_url
    if broker_url:
        env["KEGNET_BROKER_URL"] = broker_url
    process = subprocess.Popen(
        [sys.executable, "-m", "kegnet_cli.main", "serve", "--port", str(port), "--loglevel", "WARNING"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(240):
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return process, url, (home / "api_key").read_text().strip()
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise SystemExit("kegnet serve did not start")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", help="an existing server (default: start kegnet serve)")
    parser.add_argument("--key", help="API key for --url")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs-per-client", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--rate", type=float, help="open-loop: this many polls per second in all (default: closed-loop)"
    )
    parser.add_argument("--database-url", help="the started server's database (default: SQLite in its home)")
    parser.add_argument("--broker-url", help="the started server's broker (default: a folder in its home)")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--write", type=Path, help="write the figures into this markdown file")
    args = parser.parse_args()

    model = tiny_model()
    server = None
    with tempfile.TemporaryDirectory() as scratch:
        if args.url:
            url, key = args.url, args.key or os.environ.get("KEGNET_API_KEY", "")
        else:
            server, url, key = start_server(Path(scratch) / ".kegnet", args.database_url, args.broker_url)
        try:
            tally = Tally()
            # This process imported torch (for the model): keep those objects out of the
            # collector's full passes, which would stall its event loop and count as latency.
            gc.collect()
            gc.freeze()
            started = time.monotonic()
            deadline = started + args.seconds

            async def run_all() -> None:
                closed = args.rate is None
                await asyncio.gather(
                    *(
                        client_loop(url, key, model, args.jobs_per_client, deadline, tally, index, closed)
                        for index in range(args.clients)
                    )
                )
                if not closed:
                    await open_loop_polls(url, key, tally.job_ids, args.rate, args.clients, deadline, tally)

            asyncio.run(run_all())
            elapsed = time.monotonic() - started
            statuses, lost, duplicated = check_jobs(url, key, tally.job_ids)
        finally:
            if server is not None:
                os.killpg(server.pid, signal.SIGTERM)
                server.wait(timeout=60)

    figures = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "clients": args.clients,
        "rate": args.rate,
        "backend": "Postgres" if args.database_url else "SQLite",
        "broker": "Redis" if args.broker_url else "filesystem",
        "seconds": round(elapsed, 1),
        "jobs_submitted": len(tally.job_ids),
        "submit_p50_ms": round(percentile(tally.submit_ms, 0.5), 1),
        "submit_p99_ms": round(percentile(tally.submit_ms, 0.99), 1),
        "polls": len(tally.poll_ms),
        "polls_per_s": round(len(tally.poll_ms) / (tally.poll_seconds or elapsed), 1),
        "poll_p50_ms": round(statistics.median(tally.poll_ms), 2) if tally.poll_ms else None,
        "poll_p99_ms": round(percentile(tally.poll_ms, 0.99), 2),
        "errors": tally.errors,
        "final_statuses": statuses,
        "lost": lost,
        "duplicated": duplicated,
    }
    text = json.dumps(figures, indent=2)
    sys.stdout.write(text + "\n")
    if args.json:
        Path(args.json).write_text(text)
    if args.write:
        write_section(
            args.write, "load" if figures["backend"] == "SQLite" else "load-postgres", markdown(figures)
        )
    failed = tally.errors or lost or duplicated
    if failed:
        sys.stderr.write(f"FAILED: {tally.errors} errors, {lost} jobs lost, {duplicated} duplicated\n")
    return 1 if failed else 0


def markdown(figures: dict[str, Any]) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    polling = f"open-loop, {figures['rate']:.0f} a second offered" if figures["rate"] else "closed-loop"
    return "\n".join(
        [
            f"Measured {stamp} on {figures['machine']} by `benchmarks/load.py --clients "
            f"{figures['clients']} --seconds {figures['seconds']:.0f}"
            + (f" --rate {figures['rate']:.0f}" if figures["rate"] else "")
            + f"` against `kegnet serve` ({figures['backend']}, {figures['broker']} broker, one worker "
            "running the submitted quick jobs meanwhile).",
            "",
            "| figure | value |",
            "|---|---|",
            f"| concurrent clients | {figures['clients']} |",
            f"| polling | {polling} |",
            f"| jobs submitted | {figures['jobs_submitted']} |",
            f"| submit latency p50 / p99 | {figures['submit_p50_ms']} ms / {figures['submit_p99_ms']} ms |",
            f"| status polls | {figures['polls']} ({figures['polls_per_s']} per second) |",
            f"| poll latency p50 / p99 | {figures['poll_p50_ms']} ms / {figures['poll_p99_ms']} ms |",
            f"| errors | {figures['errors']} |",
            f"| jobs lost / duplicated | {figures['lost']} / {figures['duplicated']} |",
            f"| jobs by status at the end (before cancelling) | {figures['final_statuses']} |",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
