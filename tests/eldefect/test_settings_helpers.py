"""Settings helpers: URLs safe to log, and the CPUs a container really grants."""

from __future__ import annotations

from pathlib import Path

import pytest

from eldefect.settings import Settings, available_cpus, redact_secrets, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://app:s3cret@db:5432/x", "postgresql+psycopg://app:***@db:5432/x"),
        ("redis://:s3cret@redis:6379/0", "redis://:***@redis:6379/0"),
        ("amqp://user:s3cret@mq//", "amqp://user:***@mq//"),
        ("http://mlflow:5000/?token=s3cret&x=1", "http://mlflow:5000/?token=***&x=1"),
        ("sqlite:///var/eldefect.db", "sqlite:///var/eldefect.db"),
        ("filesystem://", "filesystem://"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
    ],
)
def test_redact_url_hides_passwords_and_keeps_the_rest(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_secrets_masks_a_password_echoed_in_a_message() -> None:
    urls = ["postgresql://app:p%40ss@db/x", "redis://redis/0"]
    assert redact_secrets("login app:p@ss failed (p%40ss)", urls) == "login app:*** failed (***)"


def _cgroup(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    return tmp_path


def test_available_cpus_follows_the_cgroup_quota(tmp_path: Path) -> None:
    v2_quota = _cgroup(tmp_path / "v2", {"cpu.max": "150000 100000\n"})
    v2_none = _cgroup(tmp_path / "v2none", {"cpu.max": "max 100000\n"})
    v1_quota = _cgroup(
        tmp_path / "v1", {"cpu/cpu.cfs_quota_us": "300000", "cpu/cpu.cfs_period_us": "100000"}
    )
    v1_none = _cgroup(
        tmp_path / "v1none", {"cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}
    )
    host = available_cpus(tmp_path / "missing")

    assert available_cpus(v2_quota) == 1  # 1.5 CPUs: one decode at a time fits, two do not
    assert available_cpus(v2_none) == host
    assert available_cpus(v1_quota) == min(3, host)
    assert available_cpus(v1_none) == host
    assert host >= 1


def test_decode_slots_setting_wins_over_the_cpu_count() -> None:
    assert Settings(decode_slots=7).effective_decode_slots == 7
    assert Settings().effective_decode_slots == available_cpus()
