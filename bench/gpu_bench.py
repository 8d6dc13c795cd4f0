"""GPU figures for issue 9, in one process on a machine with a CUDA card (see bench/gpu.sh).

1. Limit: the forward pass alone at batch 1..1024, fp32 and bf16 autocast with channels_last.
2. Pipeline: JPEG decode + resize to the model input on the CPU in 1..N processes (the
   reduced-size decode the worker uses), and on the GPU with nvJPEG
   (`torchvision.io.decode_jpeg(..., device="cuda")`, batched) plus a GPU resize.
3. Worker: a queue of `--jobs` jobs in a fresh SQLite database drained by the worker's own
   `process_batch` with the model on CUDA (claim, decode, statistics, forward, record), as
   images/s and as a fraction of the forward-pass limit at the worker's batch size.

Images are synthetic 600 px JPEG strips (the machine reaches no data folder). Prints tables
and writes every figure to `--json`.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from db import jobs as crud
from db.migrate import upgrade
from db.session import session_scope
from eldefect.bench import machine, synthetic_images, untrained_model
from eldefect.card import ModelCard
from eldefect.imaging import decode_gray, verify_image
from eldefect.predictor import Predictor, TorchRunner
from eldefect.preprocess import InputSpec, preprocess_batch
from eldefect.settings import Settings
from workers.inference import process_batch

SIZE = 224
MAX_PIXELS = 40_000_000
DEVICE = "cuda"  # --device cpu: a dry run of every code path but nvJPEG, on any machine


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def _timed(fn: Any, items: int, repeats: int = 5) -> float:
    fn()
    _sync()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync()
        rates.append(items / (time.perf_counter() - start))
    return statistics.median(rates)


def limit(batches: list[int]) -> list[dict[str, Any]]:
    model = untrained_model("resnet18", 5).to(DEVICE).eval()
    rows = []
    for batch in batches:
        x = torch.randn(batch, 1, SIZE, SIZE, device=DEVICE)  # (B, 1, S, S)
        xc = x.to(memory_format=torch.channels_last)

        def fp32(x: torch.Tensor = x) -> torch.Tensor:
            return model(x)

        def bf16(xc: torch.Tensor = xc) -> torch.Tensor:
            with torch.autocast(DEVICE, dtype=torch.bfloat16):
                return model(xc)

        with torch.inference_mode():
            model.to(memory_format=torch.contiguous_format)
            fp32_rate = _timed(fp32, batch)
            model.to(memory_format=torch.channels_last)
            rate = _timed(bf16, batch)
        rows.append({"batch": batch, "fp32_images_per_s": fp32_rate, "bf16_cl_images_per_s": rate})
        print(
            f"limit batch {batch:>5}: fp32 {fp32_rate:>9.0f}/s  bf16+channels_last {rate:>9.0f}/s"
        )
    return rows


def _cpu_decode(files: list[bytes]) -> int:
    """What a worker does before the forward pass: reduced-size decode, then resize."""
    grays = [decode_gray(f, max_pixels=MAX_PIXELS, min_side=SIZE) for f in files]
    return len(preprocess_batch(grays, InputSpec(SIZE, 0.5, 0.25)))  # (N, 1, S, S)


def cpu_decode(files: list[bytes], procs: list[int], total: int) -> list[dict[str, Any]]:
    rows = []
    chunks = [files] * max(1, total // len(files))
    for n in procs:
        # Spawned, not forked: a fork of a process whose torch (or CUDA) threads already
        # run can deadlock in the child.
        with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
            list(pool.map(_cpu_decode, chunks[:n]))  # warm the workers
            start = time.perf_counter()
            done = sum(pool.map(_cpu_decode, chunks))
            rate = done / (time.perf_counter() - start)
        rows.append({"processes": n, "images_per_s": rate})
        print(f"CPU decode+resize in {n:>2} processes: {rate:>8.0f} images/s")
    return rows


def gpu_decode(files: list[bytes], batch: int) -> dict[str, Any]:
    from torchvision.io import ImageReadMode, decode_jpeg

    datas = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in files]
    datas = (datas * (batch // len(datas) + 1))[:batch]

    def run() -> torch.Tensor:
        images = decode_jpeg(datas, mode=ImageReadMode.GRAY, device=DEVICE)
        # As eldefect.preprocess.resize, on the card: (1, 1, H, W) -> (1, S, S) each.
        return torch.cat(
            [
                F.interpolate(
                    i[None].float() / 255, size=(SIZE, SIZE), mode="bilinear", antialias=True
                )[0]
                for i in images
            ]
        )

    rate = _timed(run, batch)
    print(f"GPU nvJPEG decode+resize, batch {batch}: {rate:>8.0f} images/s")
    return {"batch": batch, "images_per_s": rate}


def worker_drain(files: list[bytes], jobs: int, batch_size: int) -> dict[str, Any]:
    """The worker's process_batch on CUDA over `jobs` queued jobs in a fresh database."""
    root = Path(tempfile.mkdtemp(prefix="eldefect-gpu-"))
    url = f"sqlite:///{root / 'jobs.db'}"
    upgrade(url)
    labels = ["hot_spot", "scratch", "black_border", "no_electricity", "broken"]
    spec = {"size": SIZE, "mean": 0.5, "std": 0.25}
    card = ModelCard(labels, spec, dict.fromkeys(labels, 0.5), "none", 0.0)
    runner = TorchRunner(untrained_model("resnet18", len(labels)), torch.device(DEVICE))
    model = Predictor(runner, card, name="bench", version="1")

    with session_scope(url) as session:
        station = crud.get_or_create_station(session=session, name="gpu")
        for i in range(jobs):
            data = files[i % len(files)]
            upload = crud.NewImage(data=data, meta=verify_image(data, max_pixels=MAX_PIXELS))
            crud.create_job(session=session, station_id=station.id, upload=upload)
    settings = Settings(database_url=url, batch_size=batch_size, batch_wait_ms=0, var_dir=root)
    start = time.perf_counter()
    done = 0
    while (report := process_batch(settings=settings, model_source=lambda: model)).claimed:
        done += len(report.succeeded)
    rate = done / (time.perf_counter() - start)
    print(f"worker drain of {jobs} jobs at batch {batch_size}: {rate:.0f} images/s ({done} ok)")
    return {"jobs": jobs, "succeeded": done, "batch_size": batch_size, "images_per_s": rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json", type=Path, default=Path("gpu-bench.json"))
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--worker-batch", type=int, default=256)
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--quick", action="store_true", help="Tiny sizes (a dry run).")
    opts = parser.parse_args()
    global DEVICE
    DEVICE = opts.device
    assert DEVICE == "cpu" or torch.cuda.is_available(), "no CUDA device"
    files = synthetic_images("strip", 4 if opts.quick else 32)
    card = torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu (dry run)"
    report: dict[str, Any] = {"machine": machine(), "card": card}
    report["limit"] = limit([1, 4] if opts.quick else [1, 4, 16, 64, 256, 1024])
    cpus = os.cpu_count() or 1
    procs = [1] if opts.quick else sorted({1, 4, cpus})
    report["cpu_decode"] = cpu_decode(files, procs, total=8 if opts.quick else 2048)
    if DEVICE == "cuda":
        report["gpu_decode"] = gpu_decode(files, 256)
    report["worker"] = worker_drain(files, opts.jobs, opts.worker_batch)
    at_batch = min(report["limit"], key=lambda r: abs(r["batch"] - opts.worker_batch))
    best = max(at_batch["fp32_images_per_s"], at_batch["bf16_cl_images_per_s"])
    report["worker"]["fraction_of_limit"] = report["worker"]["images_per_s"] / best
    print(
        f"worker / forward-pass limit at batch {at_batch['batch']}: "
        f"{report['worker']['fraction_of_limit']:.2f}"
    )
    opts.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {opts.json}")


if __name__ == "__main__":
    main()
