"""Data for retraining tests: shifted synthetic cells, served jobs with reviews, configs."""

from __future__ import annotations

import io
import random
import shutil
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from db.models import Job, JobImage, JobStatus, Result, Review, Station, utcnow
from db.session import session_scope
from eldefect.data.synth import write_synthetic_dataset
from eldefect.data.voc_xml import read_voc_names

CLASSES = ["crack", "black_core", "thick_line", "corner", "fragment"]


def shift(pixels: np.ndarray) -> np.ndarray:
    """The "new line's camera": inverted and dimmer, a change no augmentation covers."""
    return (255 - pixels.astype(np.float32) * 0.8).clip(0, 255).astype(np.uint8)


def shifted_dataset(
    out: Path, *, n: int, seed: int, size: int = 96, classes: list[str] = CLASSES
) -> Path:
    write_synthetic_dataset(out, n=n, seed=seed, size=size, classes=classes, progress=False)
    for path in (out / "JPEGImages").iterdir():
        Image.fromarray(shift(np.asarray(Image.open(path).convert("L")))).save(path)
    return out


def shuffle_annotations(folder: Path, seed: int = 0) -> None:
    """Give every image another image's labels (a worse teacher)."""
    xmls = sorted((folder / "Annotations").iterdir())
    texts = [p.read_text() for p in xmls]
    random.Random(seed).shuffle(texts)
    for path, text in zip(xmls, texts, strict=True):
        path.write_text(text)


def served_and_reviewed(
    database_url: str, folder: Path, *, labels: list[str], version: str = "1"
) -> list[str]:
    """Jobs as if served by `version` (a result over `labels`) and reviewed with the truth."""
    ids = []
    with session_scope(database_url) as session:
        station = Station(name=f"line-{utcnow().timestamp()}")
        session.add(station)
        session.flush()
        for path in sorted((folder / "JPEGImages").iterdir()):
            data = path.read_bytes()
            size = Image.open(io.BytesIO(data)).size
            job = Job(station_id=station.id, status=JobStatus.succeeded, finished_at=utcnow())
            job.image = JobImage(data=data, format="PNG", width=size[0], height=size[1])
            job.result = Result(
                model_name="el_defect_classifier",
                model_version=version,
                probabilities=dict.fromkeys(labels, 0.0),
                defects=[],
                thresholds=dict.fromkeys(labels, 0.5),
                inference_ms=1.0,
                queue_wait_ms=1.0,
            )
            session.add(job)
            session.flush()
            truth = read_voc_names(folder / "Annotations" / f"{path.stem}.xml")
            session.add(
                Review(
                    job_id=job.id,
                    defects=sorted(set(truth)),
                    model_name="el_defect_classifier",
                    model_version=version,
                )
            )
            ids.append(job.id)
    return ids


def write_config(path: Path, *, root: Path, epochs: int = 6, recall_floor: float = 0.9) -> Path:
    """A small synthetic-cell training config over a VOC folder (the retraining config)."""
    config = {
        "name": "retrain-test",
        "data": {"format": "voc", "root": str(root), "labels": "pvel_ad"},
        "input": {"size": 96, "mean": 0.5, "std": 0.25},
        "model": {"arch": "cnn", "width": 16, "depth": 3},
        "augment": {"rotate_degrees": 0},
        "optim": {"epochs": epochs, "batch_size": 32, "lr": 0.006, "patience": 5, "threads": 2},
        "thresholds": {"recall_floor": recall_floor},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def copy_folder(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst
