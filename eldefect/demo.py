"""`eldefect demo`: the whole system end to end on the embedded defaults, in a few minutes.

synthetic dataset -> short training -> register + promote to production -> `eldefect up`
-> a station token -> images submitted over HTTP as a station would -> results long-polled
and printed as a table -> clean stop.

The ML core never imports the serving packages: every serving step runs as a subprocess
(`eldefect up`, `eldefect token create`) or over HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from eldefect.settings import get_settings

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "demo.yaml"
STATION = "demo"
TOTAL_STEPS = 7


def _eldefect() -> list[str]:
    script = Path(sys.executable).with_name("eldefect")
    if script.exists():
        return [str(script)]
    found = shutil.which("eldefect")
    return [found] if found else [sys.executable, "-c", "from eldefect.cli import main; main()"]


def _step(number: int, text: str) -> float:
    click.secho(f"\n[{number}/{TOTAL_STEPS}] {text}", bold=True)
    return time.monotonic()


def _done(started: float, text: str = "done") -> None:
    click.echo(f"      {text} in {time.monotonic() - started:.1f} s")


def _free_port(preferred: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            sock.bind(("127.0.0.1", 0))
            return int(sock.getsockname()[1])


def _run(args: Sequence[str], env: dict[str, str], *, capture: bool = False) -> str:
    """Run `eldefect ARGS...`, its output shown (or captured); raise on failure."""
    completed = subprocess.run(
        [*_eldefect(), *args], env=env, check=False, text=True, capture_output=capture
    )
    if completed.returncode != 0:
        detail = (completed.stderr or "")[-2000:] if capture else ""
        raise click.ClickException(f"`eldefect {' '.join(args)}` failed\n{detail}")
    return completed.stdout if capture else ""


@dataclass
class Row:
    image: str
    truth: list[str]
    status: str
    defects: list[str]
    top: list[tuple[str, float]]
    version: str
    latency_ms: float | None
    error: str | None


def _row(image: Path, truth: list[str], job: dict[str, Any], latency: float | None) -> Row:
    result = job.get("result") or {}
    probs = result.get("probabilities") or {}
    error = job.get("error") or {}
    return Row(
        image=image.name,
        truth=truth,
        status=job["status"],
        defects=list(result.get("defects") or []),
        top=sorted(probs.items(), key=lambda kv: -kv[1])[:3],
        version=str((result.get("model") or {}).get("version", "-")),
        latency_ms=latency,
        error=error.get("code"),
    )


def _print_table(rows: Sequence[Row]) -> None:
    header = (
        f"{'image':<22} {'truth':<26} {'defects found':<26} {'top probabilities':<44} "
        f"{'model':>5} {'latency':>9}"
    )
    click.echo(header)
    click.echo("-" * len(header))
    for row in rows:
        found = ", ".join(row.defects) or ("none" if row.status == "succeeded" else row.status)
        if row.error:
            found = f"failed: {row.error}"
        top = "  ".join(f"{label} {p:.2f}" for label, p in row.top)
        latency = f"{row.latency_ms:7.0f}ms" if row.latency_ms is not None else "-"
        truth = ", ".join(row.truth) or "none"
        click.echo(
            f"{row.image:<22} {truth[:26]:<26} {found[:26]:<26} {top[:44]:<44} "
            f"{'v' + row.version:>5} {latency:>9}"
        )
    done = [r.latency_ms for r in rows if r.latency_ms is not None]
    if done:
        ordered = sorted(done)
        click.echo(
            f"\n{sum(r.status == 'succeeded' for r in rows)}/{len(rows)} succeeded; latency "
            f"median {ordered[len(ordered) // 2]:.0f} ms, max {ordered[-1]:.0f} ms "
            f"(upload sent -> long-poll answered, as the station saw it)"
        )


def _wait_ready(base: str, up: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if up.poll() is not None:
            raise click.ClickException(f"`eldefect up` exited early; see {log}")
        try:
            answer = httpx.get(f"{base}/readyz", timeout=2)
            if answer.status_code == 200:
                return
            last = answer.text[:200]
        except httpx.HTTPError as exc:
            last = str(exc)
        click.echo(".", nl=False)
        time.sleep(1)
    raise click.ClickException(f"the service did not become ready in {timeout:.0f} s: {last}")


def _submit_and_poll(
    http: Any, path: Path, index: int, deadline: float
) -> tuple[dict[str, Any], float | None]:
    """Upload one image as a station would, then long-poll it; returns (job, latency ms)."""
    started = time.monotonic()
    answer = http.post(
        "/v1/jobs",
        files={"file": (path.name, path.read_bytes(), "image/png")},
        data={"module_id": "DEMO-M1", "cell_id": f"C-{index:02d}"},
    )
    if answer.status_code != 202:
        raise click.ClickException(f"upload of {path.name} refused: {answer.text}")
    job = answer.json()
    while job["status"] in ("queued", "running") and time.monotonic() < deadline:
        job = http.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    done = job["status"] in ("succeeded", "failed")
    return job, (time.monotonic() - started) * 1000 if done else None


def _stop(up: subprocess.Popen[bytes], out: IO[bytes]) -> None:
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait()
    out.close()


def run_demo(*, n_images: int = 24, workdir: Path | None = None) -> int:
    """Run the demo; returns the exit code (0 when every submitted image succeeded)."""
    import httpx

    from eldefect.data.voc_xml import read_voc_names

    started_all = time.monotonic()
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
    if workdir is not None:
        var = workdir.resolve() / "var"
        env |= {
            "ELDEFECT_VAR_DIR": str(var),
            "ELDEFECT_DATABASE_URL": f"sqlite:///{var}/eldefect.db",
            "MLFLOW_TRACKING_URI": f"sqlite:///{var}/mlflow.db",
        }
    settings = get_settings()
    var_dir = Path(env.get("ELDEFECT_VAR_DIR", str(settings.var_dir)))
    demo_dir = var_dir / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port(settings.gateway_port)
    env["ELDEFECT_GATEWAY_PORT"] = str(port)
    base = f"http://127.0.0.1:{port}"
    if not DEMO_CONFIG.exists():
        raise click.ClickException(f"{DEMO_CONFIG} is missing: run the demo from the source tree")

    t = _step(1, f"write {n_images} synthetic EL cells to submit later")
    images_dir = demo_dir / "images"
    shutil.rmtree(images_dir, ignore_errors=True)
    _run(
        [
            "synth",
            "--out",
            str(images_dir),
            "--n",
            str(n_images),
            "--seed",
            "2026",
            "--size",
            "128",
        ],
        env,
    )
    _done(t)

    t = _step(2, f"train a small model ({DEMO_CONFIG.name}: synthetic cells, 12 classes)")
    _run(["train", "--config", str(DEMO_CONFIG)], env)
    _done(t)

    t = _step(3, "register it and promote it to production")
    _run(["promote", "--to", "production"], env)
    _done(t)

    t = _step(4, "start gateway, worker and beat (`eldefect up`)")
    log_path = demo_dir / "up.log"
    log_file = log_path.open("wb")
    click.echo(f"      logs: {log_path}")
    up = subprocess.Popen(
        [*_eldefect(), "up"],
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        # /readyz turns 200 once a worker's heartbeat says it serves the model.
        click.echo("      waiting for /readyz (a worker serving the model) ", nl=False)
        _wait_ready(base, up, log_path, timeout=240)
        click.echo(" ready")
        _done(t)

        t = _step(5, f"create a token for station '{STATION}'")
        token = _run(["token", "create", "--station", STATION], env, capture=True).split()[-1]
        _done(t)

        t = _step(6, f"submit {n_images} images over HTTP, long-polling each result")
        paths = sorted((images_dir / "JPEGImages").glob("*.png"))
        truths = {p: read_voc_names(images_dir / "Annotations" / f"{p.stem}.xml") for p in paths}
        headers = {"Authorization": f"Bearer {token}"}
        deadline = time.monotonic() + 240
        rows: list[Row] = []
        # A station uploads an image every ~50 ms and waits on each answer in parallel.
        with (
            httpx.Client(base_url=base, headers=headers, timeout=40) as http,
            ThreadPoolExecutor(max_workers=len(paths) or 1) as pool,
        ):
            futures = []
            for i, path in enumerate(paths):
                futures.append(pool.submit(_submit_and_poll, http, path, i, deadline))
                time.sleep(0.05)
            for i, (path, future) in enumerate(zip(paths, futures, strict=True)):
                job, latency = future.result()
                rows.append(_row(path, truths[path], job, latency))
                click.echo(f"\r      results {i + 1}/{len(paths)}", nl=False)
            click.echo("")
        _done(t)
        click.echo("")
        _print_table(rows)
    finally:
        t = _step(7, "stop the service")
        _stop(up, log_file)
        _done(t)
    ok = all(row.status == "succeeded" for row in rows)
    minutes = (time.monotonic() - started_all) / 60
    click.secho(
        f"\ndemo {'finished' if ok else 'FAILED'} in {minutes:.1f} min",
        bold=True,
        fg="green" if ok else "red",
    )
    return 0 if ok else 1
