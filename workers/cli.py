"""`eldefect worker`, `eldefect beat`, `eldefect up` (plugged into the CLI by entry point)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

import click

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

from eldefect.broker import Queue
from eldefect.cli import require_cuda
from eldefect.settings import get_settings, redact_url

# What `--queue` may name: every queue but maintenance, which `--maintenance` adds.
WORKER_QUEUES = [q.value for q in Queue if q != Queue.MAINTENANCE]


def eldefect_argv() -> list[str]:
    """How to run `eldefect` from here: the script beside this interpreter, else `-c`."""
    script = Path(sys.executable).with_name("eldefect")
    if script.exists():
        return [str(script)]
    found = shutil.which("eldefect")
    if found:
        return [found]
    return [sys.executable, "-c", "from eldefect.cli import main; main()"]


@click.command()
@click.option(
    "--queue",
    "-Q",
    "queue",
    type=click.Choice(WORKER_QUEUES),
    default=Queue.INFERENCE_CPU.value,
    show_default=True,
    help="The queue to serve.",
)
@click.option(
    "--device",
    type=click.Choice(["cpu", "cuda"]),
    default=None,
    help="Where the model runs [default: cuda for inference.gpu, else cpu].",
)
@click.option(
    "--concurrency",
    "-c",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Batches in flight at once (threads sharing one loaded model).",
)
@click.option(
    "--maintenance/--no-maintenance",
    default=True,
    show_default=True,
    help="Also consume the maintenance queue (beat's drift, prune and retraining checks). "
    "Every worker runs the sweep, in its own thread, either way.",
)
@click.option("--name", default=None, help="Worker node name [default: <queue>.<pid>@<host>].")
@click.option(
    "--metrics-port",
    type=click.IntRange(min=0, max=65535),
    default=None,
    help="Serve /metrics on this port, one per worker; 0 = none [default: worker_metrics_port].",
)
def worker(
    queue: str,
    device: str | None,
    concurrency: int,
    maintenance: bool,
    name: str | None,
    metrics_port: int | None,
) -> None:
    """Run a Celery worker that serves the production model in batches."""
    device = device or ("cuda" if queue == Queue.INFERENCE_GPU else "cpu")
    if device == "cuda":
        require_cuda()
    # Through the environment, so that the settings every module reads agree.
    os.environ["ELDEFECT_INFERENCE_DEVICE"] = device
    get_settings.cache_clear()
    settings = get_settings()
    port = settings.worker_metrics_port if metrics_port is None else metrics_port
    if port:
        from monitoring.exporter import serve_worker_metrics

        _serve_metrics(lambda: serve_worker_metrics(settings, port), "worker")

    from workers.app import app

    queues = [queue] + ([Queue.MAINTENANCE.value] if maintenance else [])
    argv = [
        "worker",
        "--queues",
        ",".join(queues),
        # Threads, not prefork: the model lives in this one process (CUDA is first touched
        # here, never before a fork) and the promotion command reaches it directly.
        "--pool",
        "threads",
        "--concurrency",
        str(concurrency),
        "--hostname",
        name or f"{queue}.{os.getpid()}@%h",
        "--loglevel",
        settings.log_level.upper(),
        # Gossip and mingle are chatter between workers we do not use; on the embedded
        # transport every broadcast is files on disk.
        "--without-gossip",
        "--without-mingle",
    ]
    app.worker_main(argv)


@click.command()
def beat() -> None:
    """Run Celery beat: the periodic maintenance messages (workers/schedule.py: drift,
    pruning, retraining checks), and the metrics exporter. The sweep is the workers' own."""
    settings = get_settings()
    settings.ensure_var_dir()
    if settings.exporter_port:
        from monitoring.exporter import serve_exporter

        _serve_metrics(lambda: serve_exporter(settings, settings.exporter_port), "exporter")
    from workers.app import app

    app.start(["beat", "--loglevel", settings.log_level.upper()])


def _serve_metrics(start: Callable[[], WSGIServer], what: str) -> None:
    """Start a metrics endpoint (a daemon thread); a port already taken stops the command."""
    from monitoring.exporter import MetricsPortError

    try:
        server = start()
    except MetricsPortError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{what} metrics: GET /metrics on port {server.server_port}")


class Supervisor:
    """Runs named child processes, prefixes their output, stops them together."""

    def __init__(self) -> None:
        self.children: dict[str, subprocess.Popen[bytes]] = {}
        self._pumps: list[threading.Thread] = []
        self._out_lock = threading.Lock()
        self.stopping = threading.Event()

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own session: Ctrl-C reaches only us, and we stop the children in order.
            start_new_session=True,
        )
        self.children[name] = proc
        pump = threading.Thread(target=self._pump, args=(name, proc.stdout), daemon=True)
        pump.start()
        self._pumps.append(pump)

    def _pump(self, name: str, stream: IO[bytes] | None) -> None:
        if stream is None:
            return
        width = max(len(n) for n in self.children) if self.children else len(name)
        for raw in iter(stream.readline, b""):
            line = raw.decode("utf-8", "replace").rstrip()
            with self._out_lock:
                click.echo(f"{name:<{max(width, 7)}} | {line}")

    def first_exited(self) -> str | None:
        for name, proc in self.children.items():
            if proc.poll() is not None:
                return name
        return None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every child (a worker finishes its batch first), wait, kill the late ones."""
        for proc in self.children.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.children.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pump in self._pumps:
            pump.join(2.0)


@click.command()
@click.option(
    "--migrate/--no-migrate", default=True, show_default=True, help="Upgrade the database first."
)
@click.option("--concurrency", "-c", type=click.IntRange(min=1), default=1, show_default=True)
def up(migrate: bool, concurrency: int) -> None:
    """Run gateway, one CPU worker and beat together; Ctrl-C stops them all."""
    settings = get_settings()
    settings.ensure_var_dir()
    if migrate:
        from db.migrate import upgrade

        click.echo(f"up      | migrating {redact_url(settings.database_url)}")
        upgrade(settings.database_url)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    base = eldefect_argv()
    sup = Supervisor()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        sup.stopping.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        sup.start("gateway", [*base, "gateway"], env)
        sup.start(
            "worker",
            [*base, "worker", "--queue", Queue.INFERENCE_CPU, "--concurrency", str(concurrency)],
            env,
        )
        sup.start("beat", [*base, "beat"], env)
        click.echo(
            f"up      | gateway on http://{settings.gateway_host}:{settings.gateway_port}, "
            f"worker on {Queue.INFERENCE_CPU}, beat; database {redact_url(settings.database_url)}, "
            f"broker {redact_url(settings.broker_url)}; Ctrl-C stops"
        )
        while not sup.stopping.wait(0.2):
            dead = sup.first_exited()
            if dead is not None:
                rc = sup.children[dead].returncode
                click.echo(f"up      | {dead} exited with code {rc}; stopping the others", err=True)
                code = 1
                break
    finally:
        click.echo("up      | stopping")
        sup.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        click.echo("up      | stopped")
    sys.exit(code)
