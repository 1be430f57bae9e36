from __future__ import annotations

from typing import Any

import pytest
from recorder import Recorder

import kit

pd = pytest.importorskip("pandas")


def test_one_wide_csv_read_back_by_pandas(kit_config: Any) -> None:
    recorder = Recorder()
    trainer = kit.Trainer(kit_config(loggers=["csv"], training={"iterations": 2}),
                          plugins=[recorder], autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    frame = pd.read_csv(trainer.run_dir / "metrics.csv")
    assert list(frame.columns[:3]) == ["step", "iteration", "wall_time"]
    scalars = [r for r in recorder.records if r.kind == "scalar"]
    assert set(frame.columns[3:]) == {r.name for r in scalars}
    for r in scalars:
        (value,) = frame.loc[frame["step"] == r.step, r.name].dropna()
        assert value == pytest.approx(r.value)
    assert frame["step"].is_monotonic_increasing and frame["step"].is_unique
