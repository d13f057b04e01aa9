"""Front-end settings and log redaction that need no server."""

from __future__ import annotations

import logging

import pytest

from spatialforge.apiserver.core.config import Settings
from spatialforge.apiserver.core.logging import REDACTED, RedactFilter


def test_kubeconfig_from_its_own_variable_then_kubectls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPATIALFORGE_API_KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBECONFIG", raising=False)
    assert Settings(dev_mode=True).kubeconfig is None  # in-cluster
    monkeypatch.setenv("KUBECONFIG", "/etc/kube/config")
    assert Settings(dev_mode=True).kubeconfig == "/etc/kube/config"
    monkeypatch.setenv("SPATIALFORGE_API_KUBECONFIG", "/etc/sf/kubeconfig")
    assert Settings(dev_mode=True).kubeconfig == "/etc/sf/kubeconfig"
    assert Settings(dev_mode=True, kubeconfig="/given").kubeconfig == "/given"


def test_log_level_from_its_own_variable_then_the_shared_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The chart's apiserver.logLevel (SPATIALFORGE_API_LOG_LEVEL) sets the front end's loggers."""
    from spatialforge.apiserver.core import logging as sf_logging

    monkeypatch.delenv("SPATIALFORGE_API_LOG_LEVEL", raising=False)
    monkeypatch.delenv("SPATIALFORGE_LOG_LEVEL", raising=False)
    assert Settings(dev_mode=True).log_level == "INFO"
    monkeypatch.setenv("SPATIALFORGE_LOG_LEVEL", "warning")
    assert Settings(dev_mode=True).log_level == "WARNING"
    monkeypatch.setenv("SPATIALFORGE_API_LOG_LEVEL", "debug")
    settings = Settings(dev_mode=True)
    assert settings.log_level == "DEBUG"
    monkeypatch.setenv("SPATIALFORGE_API_LOG_LEVEL", "chatty")
    with pytest.raises(ValueError, match="log_level"):
        Settings(dev_mode=True)
    root = logging.getLogger("spatialforge.apiserver")
    before = root.level
    try:
        sf_logging.setup([], json_logs=False, level=logging.getLevelName(settings.log_level))
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(before)


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, msg, args, None)


def test_clean_records_keep_their_args_for_formatters() -> None:
    """uvicorn's access formatter reads record.args; only a record holding a secret loses them."""
    f = RedactFilter(["s3cr3t-value-long-enough"])
    clean = _record('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/health", "1.1", 200)
    f.filter(clean)
    assert clean.args == ("127.0.0.1:5", "GET", "/health", "1.1", 200)
    assert clean.getMessage() == '127.0.0.1:5 - "GET /health HTTP/1.1" 200'

    leaky = _record("key %s and %s", "sf_live_" + "A" * 40, "s3cr3t-value-long-enough")
    f.filter(leaky)
    assert leaky.args == () and leaky.getMessage() == f"key {REDACTED} and {REDACTED}"
