from __future__ import annotations

import json
from typing import Any

from recorder import Recorder

import kit


def test_every_record_becomes_one_json_line(kit_config: Any) -> None:
    recorder = Recorder()
    trainer = kit.Trainer(kit_config(loggers=[{"jsonl": {"filename": "m.jsonl"}}]),
                          plugins=[recorder], autoload=False)
    trainer.run()
    assert trainer.run_dir is not None
    lines = [json.loads(line) for line in (trainer.run_dir / "m.jsonl").read_text().splitlines()]
    assert len(lines) == len(recorder.records)
    for line, record in zip(lines, recorder.records, strict=True):
        assert line == {"name": record.name, "value": record.value, "kind": record.kind,
                        "split": record.split, "step": record.step,
                        "iteration": record.iteration, "wall_time": record.wall_time}
