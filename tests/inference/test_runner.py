"""``run_cases``: a case is written by a background thread while the next one is computed, without losing order,
errors or atomicity."""

from __future__ import annotations

import threading

import pytest

import eunets_monai.inference.runner as runner
from eunets_monai.inference.io import TMP_TAG, CaseInput, case_complete
from tests.fixtures import HIPPOCAMPUS
from tests.inference.conftest import tiny_predictor

CLASSES = ("background", "anterior", "posterior")


def cases(n: int) -> list[CaseInput]:
    paths = sorted((HIPPOCAMPUS / "imagesTs").glob("*.nii.gz"))[:n]
    return [CaseInput(p.name[: -len(".nii.gz")], str(p)) for p in paths]


def test_next_case_is_computed_while_the_previous_one_is_written(tmp_path, monkeypatch):
    predictor = tiny_predictor(outputs=("seg", "cam"))
    computing = [threading.Event() for _ in range(3)]
    overlapped = []
    original_call, original_write = type(predictor).__call__, runner.write_case

    def call(self, volume):
        computing[len([e for e in computing if e.is_set()])].set()
        return original_call(self, volume)

    def write(output_dir, name, arrays, volume, extra=None):
        i = [c.name for c in todo].index(name)
        if i + 1 < len(todo):  # the next case starts while this one is still being written
            overlapped.append(computing[i + 1].wait(timeout=20))
        return original_write(output_dir, name, arrays, volume, extra)

    todo = cases(3)
    monkeypatch.setattr(type(predictor), "__call__", call)
    monkeypatch.setattr(runner, "write_case", write)
    rows = runner.run_cases(todo, predictor, tmp_path, CLASSES, progress=False)
    assert overlapped == [True, True]
    assert [r["case"] for r in rows] == [c.name for c in todo]
    assert [r["status"] for r in rows] == ["ok"] * 3
    assert all(case_complete(tmp_path, c.name, ("seg", "cam")) for c in todo)
    assert all(r["seconds"] > 0 and r["volume_ml_anterior"] is not None for r in rows)


@pytest.mark.parametrize("where", ["write", "preview"])
def test_a_failing_write_or_preview_costs_only_its_own_case(tmp_path, monkeypatch, caplog, where):
    predictor = tiny_predictor(outputs=("seg", "uncertainty"))
    todo = cases(3)
    bad = todo[1].name
    original_write = runner.write_case

    def write(output_dir, name, arrays, volume, extra=None):
        if where == "write" and name == bad:
            raise OSError(f"No space left on device: '{output_dir}'")
        return original_write(output_dir, name, arrays, volume, extra)

    def preview(case, volume, maps):
        if where == "preview" and case.name == bad:
            raise ValueError("cannot draw this one")
        return None

    monkeypatch.setattr(runner, "write_case", write)
    rows = runner.run_cases(todo, predictor, tmp_path, CLASSES, progress=False, on_case=preview)
    by_case = {r["case"]: r for r in rows}
    assert [r["case"] for r in rows] == [c.name for c in todo]
    assert by_case[bad]["status"] == "failed" and by_case[bad]["seconds"] > 0
    assert ("No space left" if where == "write" else "cannot draw") in by_case[bad]["error"]
    assert len([m for m in caplog.messages if bad in m]) == 1  # one line, naming the file
    for c in (todo[0], todo[2]):
        assert by_case[c.name]["status"] == "ok"
        assert case_complete(tmp_path, c.name, ("seg", "uncertainty"))


def test_interrupt_finishes_the_case_being_written(tmp_path, monkeypatch):
    predictor = tiny_predictor(outputs=("seg", "cam"))
    todo = cases(3)
    original_call = type(predictor).__call__
    calls = []

    def call(self, volume):
        calls.append(volume)
        if len(calls) == 2:  # Ctrl-C while the second case computes and the first one is being written
            raise KeyboardInterrupt
        return original_call(self, volume)

    monkeypatch.setattr(type(predictor), "__call__", call)
    with pytest.raises(KeyboardInterrupt):
        runner.run_cases(todo, predictor, tmp_path, CLASSES, progress=False)
    assert case_complete(tmp_path, todo[0].name, ("seg", "cam"))
    assert not any(TMP_TAG in p.name for p in tmp_path.iterdir())
