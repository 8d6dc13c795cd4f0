"""The serving sections of `eldefect bench` (plugged in by entry point `eldefect.bench_sections`).

End to end: a real gateway and real workers as child processes on a fresh database (embedded
SQLite + file broker, and Postgres + Redis when given), fed by the load generator
(workers/benchmark/loadgen.py, its own process) at 1, 4, 16 and 64 stations. Peers: the same
model, images and load generator against a synchronous FastAPI server
(bench/peers/sync_predict.py) and MLflow's scoring server. Memory: peak RSS (VmHWM) of the
gateway and of each worker. Scaling: 1 and 2 workers; cells, strips and modules.
Every point is bounded by the plan's job count and seconds; every child is stopped at the end.
MLflow's server gets the same weights logged in MLflow's PyTorch flavour (our own artifact
is weights-only, which it cannot serve): `_mlflow_peer_registry`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from eldefect.bench import BenchContext

REPO = Path(__file__).resolve().parents[2]
SYNC_PEER = REPO / "bench" / "peers" / "sync_predict.py"
START_TIMEOUT_S = 180.0  # a worker loads torch, the model and exports it to ONNX first


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_rss_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) of the largest live process in `pid`'s session, from
    /proc (Linux): a server that runs its work in a child (MLflow's) is measured by it."""
    peaks = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or os.getsid(int(proc.name)) != pid:
                continue
            status = (proc / "status").read_text().splitlines()
        except (OSError, ProcessLookupError):  # gone, or not ours to read
            continue
        peaks += [int(line.split()[1]) / 1024 for line in status if line.startswith("VmHWM:")]
    return max(peaks, default=float("nan"))


class Children:
    """Child processes in their own sessions, output to log files; stopped together."""

    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env = logs, env
        logs.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("ab") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
            )
        self.procs[name] = proc
        return proc

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({proc.returncode}); see {self.logs}/{name}.log")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def wait_http(self, url: str, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{url} did not answer 200 within {timeout:.0f} s; see {self.logs}")


def run_load(
    ctx: BenchContext,
    *,
    url: str,
    mode: str,
    files: Path,
    stations: int,
    token: str = "",
    jobs: int | None = None,
    seconds: float | None = None,
) -> dict[str, Any]:
    """One bounded load-generator run in its own process; its JSON figures."""
    plan = ctx.plan
    argv = [
        sys.executable,
        "-m",
        "workers.benchmark.loadgen",
        f"--url={url}",
        f"--mode={mode}",
        f"--files={files}",
        f"--stations={stations}",
        f"--jobs={jobs or max(plan.jobs_per_point, stations * 2)}",
        f"--seconds={seconds or plan.seconds_per_point}",
    ]
    if token:
        argv.append(f"--token={token}")
    out = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"load generator failed: {out.stderr.strip()[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def write_files(folder: Path, bodies: Sequence[bytes], suffix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, body in enumerate(bodies):
        (folder / f"{i:04d}{suffix}").write_bytes(body)
    return folder


def _suffix(data: bytes) -> str:
    return ".png" if data.startswith(b"\x89PNG") else ".jpg"


def standalone_context(
    out: Path,
    *,
    seconds: float,
    postgres_url: str | None,
    redis_url: str | None,
    kind: str = "strip",
    arch: str = "resnet18",
) -> tuple[BenchContext, Path]:
    """For the scripts under bench/ that run one stack outside `eldefect bench`: an untrained
    `arch` (224 px) registered in a fresh MLflow store under `out`, synthetic images of
    `kind` written as files; points bounded by `seconds`. Returns the context and the files."""
    from eldefect.bench import BenchPlan, register_untrained, synthetic_images
    from eldefect.labels import load_label_set
    from eldefect.settings import get_settings

    out.mkdir(parents=True, exist_ok=True)
    os.environ["ELDEFECT_VAR_DIR"] = str(out)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{out / 'mlflow.db'}"
    get_settings.cache_clear()
    name, alias = get_settings().model_name, get_settings().model_alias
    labels = load_label_set("pv_multi_defect").labels
    register_untrained(arch=arch, size=224, labels=labels, name=name, alias=alias)
    images = {"strip": synthetic_images(kind, 16)}
    ctx = BenchContext(
        plan=BenchPlan(jobs_per_point=100_000, seconds_per_point=seconds),
        model_name=name,
        model_uri=f"models:/{name}@{alias}",
        tracking_uri=os.environ["MLFLOW_TRACKING_URI"],
        images=images,
        workdir=out,
        echo=print,
        options={"postgres_url": postgres_url, "redis_url": redis_url},
    )
    files = write_files(out / "files" / "strip", images["strip"], _suffix(images["strip"][0]))
    return ctx, files


# --- our stack -----------------------------------------------------------------------------


@contextmanager
def fresh_database(backend: str, root: Path, postgres_url: str | None) -> Iterator[str]:
    """An empty, migrated database for one stack; a Postgres one is dropped afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    from db.migrate import upgrade

    if backend == "embedded":
        url = f"sqlite:///{root / 'eldefect.db'}"
        upgrade(url)
        yield url
        return
    assert postgres_url, "the Postgres backend needs --postgres-url"
    name = f"eldefect_bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(postgres_url).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Stack:
    """Gateway + N workers on one database and broker, as `eldefect up` runs them."""

    def __init__(self, ctx: BenchContext, *, backend: str, root: Path, workers: int) -> None:
        self.ctx, self.backend, self.root, self.n_workers = ctx, backend, root, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ""
        self.database_url = ""

    def env(self, database_url: str) -> dict[str, str]:
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "ELDEFECT_VAR_DIR": str(self.root),
            "ELDEFECT_DATABASE_URL": database_url,
            "MLFLOW_TRACKING_URI": self.ctx.tracking_uri,
            "ELDEFECT_MODEL_NAME": self.ctx.model_name,
            "ELDEFECT_MODEL_ALIAS": self.ctx.model_uri.split("@", 1)[1],
            "ELDEFECT_WORKER_METRICS_PORT": "0",
            "ELDEFECT_LOG_LEVEL": "INFO",
        }
        if self.backend == "embedded":
            env.pop("ELDEFECT_BROKER_URL", None)  # the embedded transport under VAR_DIR
        else:
            env["ELDEFECT_BROKER_URL"] = str(self.ctx.options["redis_url"])
        return env

    @contextmanager
    def running(self) -> Iterator[Stack]:
        from db import jobs as crud
        from db.session import session_scope
        from workers.cli import eldefect_argv

        self.root.mkdir(parents=True, exist_ok=True)
        with fresh_database(self.backend, self.root, self.ctx.options.get("postgres_url")) as url:
            self.database_url = url
            with session_scope(url) as session:
                station = crud.get_or_create_station(session=session, name="bench")
                self.token = crud.create_token(session=session, station_id=station.id)
            self.children = Children(self.root / "logs", self.env(url))
            try:
                argv = eldefect_argv()
                self.gateway = self.children.start(
                    "gateway", [*argv, "gateway", "--port", str(self.port), "--no-migrate"]
                )
                self.workers = [
                    self.children.start(
                        f"worker{i}", [*argv, "worker", "--name", f"bench{i}.{self.port}@%h"]
                    )
                    for i in range(self.n_workers)
                ]
                self.children.wait_http(f"{self.url}/healthz")
                self._warm_up()
                yield self
            finally:
                self.children.stop()

    def _warm_up(self) -> None:
        """Jobs until every worker has loaded the model (their first batch waits for it)."""
        files = self.ctx.workdir / "files" / "strip"
        n = 4 * self.n_workers
        got = run_load(
            self.ctx,
            url=self.url,
            mode="eldefect",
            files=files,
            stations=2 * self.n_workers,
            token=self.token,
            jobs=n,
            seconds=START_TIMEOUT_S,
        )
        self.children.check_alive()
        if got["succeeded"] != n:
            raise RuntimeError(f"warm-up: {got['outcomes']}; see {self.root / 'logs'}")

    def load(self, files: Path, stations: int) -> dict[str, Any]:
        row = run_load(
            self.ctx,
            url=self.url,
            mode="eldefect",
            files=files,
            stations=stations,
            token=self.token,
        )
        self.children.check_alive()
        return row

    def peak_rss(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "gateway_mib": peak_rss_mib(self.gateway.pid),
            "workers_mib": [peak_rss_mib(w.pid) for w in self.workers],
        }


# --- peers ---------------------------------------------------------------------------------


def _invocation_bodies(ctx: BenchContext, folder: Path) -> Path:
    """MLflow's server takes model input, not image files: preprocessed tensors as JSON."""
    from eldefect.imaging import decode_gray
    from eldefect.preprocess import preprocess_batch
    from eldefect.registry import load_card

    spec = load_card(ctx.model_uri).input_spec
    bodies = [
        json.dumps(
            {
                "inputs": preprocess_batch([decode_gray(f, max_pixels=1 << 30)], spec)
                .numpy()
                .tolist()
            }
        ).encode()
        for f in ctx.images["strip"]
    ]
    return write_files(folder, bodies, ".json")


def _mlflow_peer_registry(ctx: BenchContext) -> tuple[str, str]:
    """The same weights as MLflow's own PyTorch flavour, which its server can load.

    Our models are logged weights-only (eldefect.artifact), which `mlflow models serve` has
    no backend for; so the peer gets a copy logged the way MLflow serves models, registered
    under the same name and alias in a registry of the bench's own (nothing shared is
    touched). Returns (tracking URI, model URI).
    """
    import mlflow
    from mlflow.models import infer_signature

    from eldefect.registry import load_model

    model, card = load_model(ctx.model_uri, tracking_uri=ctx.tracking_uri)
    name, alias = ctx.model_name, ctx.model_uri.split("@", 1)[1]
    uri = f"sqlite:///{ctx.workdir / 'peers' / 'mlflow.db'}"
    (ctx.workdir / "peers").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    size = card.input_spec.size
    example = np.zeros((2, 1, size, size), np.float32)
    location = (ctx.workdir / "peers" / "mlartifacts").as_uri()
    experiment = mlflow.create_experiment("mlflow-peer", artifact_location=location)
    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            serialization_format="pickle",
            signature=infer_signature(example, np.zeros((2, len(card.labels)), np.float32)),
            pip_requirements=["torch"],  # never installed: --env-manager local
        )
    version = mlflow.register_model(info.model_uri, name).version
    mlflow.MlflowClient(uri).set_registered_model_alias(name, alias, str(version))
    mlflow.set_tracking_uri(ctx.tracking_uri)
    return uri, ctx.model_uri


@contextmanager
def peer(ctx: BenchContext, name: str) -> Iterator[tuple[str, int]]:
    """A running peer server: its URL and pid."""
    port = free_port()
    tracking_uri, model_uri = ctx.tracking_uri, ctx.model_uri
    if name == "mlflow_serve":
        tracking_uri, model_uri = _mlflow_peer_registry(ctx)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONUNBUFFERED": "1"}
    # MLflow runs `uvicorn` by name: the one beside this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    children = Children(ctx.workdir / "peers" / "logs", env)
    if name == "sync_predict":
        argv = [sys.executable, str(SYNC_PEER), f"--model-uri={ctx.model_uri}", f"--port={port}"]
        probe = "/docs"
    else:
        mlflow = str(Path(sys.executable).with_name("mlflow"))
        argv = [mlflow, "models", "serve", "-m", model_uri, "--env-manager", "local"]
        argv += ["-h", "127.0.0.1", "-p", str(port)]
        probe = "/ping"
    proc = children.start(name, argv)
    try:
        children.wait_http(f"http://127.0.0.1:{port}{probe}")
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        children.stop()


# --- the section ---------------------------------------------------------------------------


def _e2e_table(rows: list[dict[str, Any]], key: str) -> str:
    lines = [
        f"{key:<16}{'stations':>9}{'images/s':>10}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        f"{'not ok':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r[key]:<16}{r['stations']:>9}{r['images_per_s']:>10.1f}{r['p50_ms']:>9.0f}"
            f"{r['p95_ms']:>9.0f}{r['p99_ms']:>9.0f}{r['not_succeeded'] + r['unfinished']:>8}"
        )
    return "\n".join(lines)


def ratios(report: dict[str, Any], backend: str) -> dict[str, float]:
    """The issue's targets as ratios within this run (NaN where a figure is missing)."""
    ours = {r["stations"]: r for r in report["end_to_end"] if r["backend"] == backend}
    best: dict[int, dict[str, Any]] = {}
    for r in report["peers"]:
        if r["stations"] not in best or r["images_per_s"] > best[r["stations"]]["images_per_s"]:
            best[r["stations"]] = r
    out: dict[str, float] = {}
    for s in (16, 64):
        if s in ours and s in best:
            out[f"throughput_vs_best_peer_at_{s}"] = (
                ours[s]["images_per_s"] / best[s]["images_per_s"]
            )
    if 1 in ours and 1 in best:
        out["p50_minus_best_peer_p50_ms_at_1"] = ours[1]["p50_ms"] - min(
            r["p50_ms"] for r in report["peers"] if r["stations"] == 1
        )
    pipeline = report.get("pipeline", {}).get("pipeline_images_per_s")
    top = max((r["images_per_s"] for r in ours.values()), default=math.nan)
    if pipeline:
        out["saturation_vs_pipeline"] = top / pipeline
    return out


def run_serving(ctx: BenchContext) -> dict[str, Any]:
    plan, echo = ctx.plan, ctx.echo
    logging.getLogger("httpx").setLevel(logging.WARNING)  # the start-up probes' requests
    files = {
        kind: write_files(ctx.workdir / "files" / kind, bodies, _suffix(bodies[0]))
        for kind, bodies in ctx.images.items()
    }
    backends = ["embedded"] + (["postgres+redis"] if ctx.options.get("postgres_url") else [])
    main_backend = backends[-1]
    end_to_end: list[dict[str, Any]] = []
    memory: list[dict[str, Any]] = []
    scaling: list[dict[str, Any]] = []
    for backend in backends:
        stack = Stack(ctx, backend=backend, root=ctx.workdir / backend, workers=1)
        with stack.running():
            for stations in plan.stations:
                row = {"backend": backend, **stack.load(files["strip"], stations)}
                end_to_end.append(row)
                echo(_e2e_table([row], "backend").splitlines()[-1])
            if backend == main_backend:
                for kind in ("cell", "strip", "module"):
                    row = stack.load(files[kind], plan.scaling_stations)
                    scaling.append({"backend": backend, "workers": 1, "images": kind, **row})
            memory.append(stack.peak_rss())
    stack = Stack(ctx, backend=main_backend, root=ctx.workdir / f"{main_backend}-2w", workers=2)
    with stack.running():
        row = stack.load(files["strip"], plan.scaling_stations)
        scaling.append({"backend": main_backend, "workers": 2, "images": "strip", **row})
        memory.append({**stack.peak_rss(), "workers": 2})

    peers: list[dict[str, Any]] = []
    bodies = {"sync_predict": files["strip"]}
    bodies["mlflow_serve"] = _invocation_bodies(ctx, ctx.workdir / "files" / "invocations")
    for name, mode in (("sync_predict", "predict"), ("mlflow_serve", "invocations")):
        with peer(ctx, name) as (url, pid):
            for stations in plan.stations:
                row = {
                    "peer": name,
                    **run_load(ctx, url=url, mode=mode, files=bodies[name], stations=stations),
                }
                peers.append(row)
                echo(_e2e_table([row], "peer").splitlines()[-1])
            memory.append({"peer": name, "server_mib": peak_rss_mib(pid)})

    result: dict[str, Any] = {
        "end_to_end": end_to_end,
        "peers": peers,
        "memory": memory,
        "scaling": scaling,
    }
    result["ratios"] = ratios({**ctx.results, **result}, main_backend)
    echo("\n== end to end (jobs through gateway, broker, worker, database) ==")
    echo(_e2e_table(end_to_end, "backend"))
    echo("\n== peers (same model, images, load generator) ==")
    echo(_e2e_table(peers, "peer"))
    echo("\n== scaling ==")
    for r in scaling:
        echo(
            f"{r['backend']:<16}{r['workers']:>2} worker(s) {r['images']:<7}"
            f"{r['images_per_s']:>8.1f} images/s  p50 {r['p50_ms']:.0f} ms"
        )
    echo("\n== memory (peak RSS, MiB) ==")
    for m in memory:
        echo(json.dumps(m))
    echo("\n== ratios ==")
    for key, value in result["ratios"].items():
        echo(f"{key}: {value:.2f}")
    return result
