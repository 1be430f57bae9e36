"""The contract file documents itself: every hook, every argument, in firing order."""

from __future__ import annotations

import inspect

from kit import hookspecs

REQUIRED = {
    "kit_train_begin": ["trainer"], "kit_train_end": ["trainer"],
    "kit_iteration_begin": ["trainer", "iteration"],
    "kit_iteration_end": ["trainer", "iteration", "metrics"],
    "kit_step_begin": ["trainer", "iteration", "batch_idx"],
    "kit_step_end": ["trainer", "iteration", "batch_idx", "loss"],
    "kit_loader_exhausted": ["trainer", "iteration"],
    "kit_val_begin": ["trainer", "iteration"],
    "kit_val_end": ["trainer", "iteration", "val_results"],
    "kit_val_step_begin": ["trainer", "batch_idx"],
    "kit_val_step_end": ["trainer", "batch_idx", "loss"],
    "kit_test_begin": ["trainer"], "kit_test_end": ["trainer", "test_results"],
    "kit_test_step_begin": ["trainer", "batch_idx"],
    "kit_test_step_end": ["trainer", "batch_idx", "loss"],
    "kit_metric_recorded": ["trainer", "record"],
    "kit_checkpoint_save": ["trainer", "checkpoint"],
    "kit_checkpoint_load": ["trainer", "checkpoint"],
    "kit_exception": ["trainer", "error"], "kit_interrupt": ["trainer", "signum"],
}


def test_every_required_hook_exists_with_its_arguments() -> None:
    for name, args in REQUIRED.items():
        assert list(inspect.signature(getattr(hookspecs, name)).parameters) == args, name
    assert set(hookspecs.HOOK_NAMES) == set(REQUIRED)


def test_every_hook_documents_itself_and_each_argument() -> None:
    for name in hookspecs.HOOK_NAMES:
        doc = inspect.getdoc(getattr(hookspecs, name)) or ""
        summary = doc.splitlines()[0] if doc else ""
        assert summary.endswith("."), f"{name} needs a one-line summary"
        for arg in inspect.signature(getattr(hookspecs, name)).parameters:
            assert f":param {arg}:" in doc, f"{name} does not document {arg}"


def test_module_docstring_places_every_hook_in_the_loop() -> None:
    doc = hookspecs.__doc__ or ""
    for name in hookspecs.HOOK_NAMES:
        assert f"{name}(" in doc, f"{name} missing from the pseudocode"
    # firing order in the pseudocode follows the documented loop
    positions = [doc.index(f"{n}(") for n in ("kit_train_begin", "kit_iteration_begin",
                                              "kit_step_begin", "kit_step_end",
                                              "kit_loader_exhausted", "kit_val_begin",
                                              "kit_val_end", "kit_iteration_end",
                                              "kit_test_begin", "kit_test_end", "kit_train_end")]
    assert positions == sorted(positions)
