"""A logger that raises is reported once and disabled; the run goes on (unless strict)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import kit
from kit.plugins import EntryPointSpec, Registry


class Flaky:
    calls = 0

    @kit.hookimpl
    def kit_metric_recorded(self, record: kit.MetricRecord) -> None:
        Flaky.calls += 1
        raise ConnectionError("tracking server went away")


def registry() -> Registry:
    real = Registry.from_environment()
    fake = EntryPointSpec(group="kit.loggers", name="flaky", package="acme", value="test_isolation:Flaky")
    return Registry([*real.specs, fake])


def test_failing_logger_is_disabled_and_named_in_the_summary(
    kit_config: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    Flaky.calls = 0
    trainer = kit.Trainer(kit_config(loggers=["flaky", "jsonl"]), registry=registry(), autoload=False)
    trainer.run()
    assert trainer.status == "finished"
    assert Flaky.calls == 1
    err = capsys.readouterr().err
    assert err.count("acme[flaky] failed in kit_metric_recorded") == 1
    assert "ConnectionError: tracking server went away" in err
    assert trainer.run_dir is not None
    summary = json.loads((trainer.run_dir / "summary.json").read_text())
    assert summary["failed_loggers"] == {
        "flaky": "kit_metric_recorded: ConnectionError: tracking server went away"}
    # the other logger kept every record
    assert "test/accuracy" in (trainer.run_dir / "metrics.jsonl").read_text()


def test_strict_logger_failure_is_fatal(kit_config: Any) -> None:
    trainer = kit.Trainer(kit_config(loggers=[{"flaky": {"strict": True}}]), registry=registry(),
                          autoload=False)
    with pytest.raises(ConnectionError):
        trainer.run()
    assert trainer.status == "failed"
