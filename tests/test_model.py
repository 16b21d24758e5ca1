"""utils.model: a batch read from a record checks every stage at once and builds its Stage values on first read."""

from __future__ import annotations

import copy
import pickle

import pytest

from utils.model import Batch, RecordError, Stage

GOOD = {"percentage": 50, "first_seen_at": 1_700_000_000, "updated_at": 1_700_000_060.5, "completed_at": None}


def _record(stages: dict) -> dict:
    return {"id": "b1", "state": "running", "started_at": 1_700_000_000.0, "expected_stages": ["a"], "stages": stages}


def _stages() -> dict:
    return {
        "a": {**GOOD, "percentage": 100, "completed_at": 1_700_000_060},
        "b": {**GOOD, "note": "kept"},  # a key a newer release wrote
        "c": dict(GOOD),
    }


def test_it_reads_a_batch_whose_stages_equal_those_of_one_built_from_stage_values():
    record = _record(_stages())
    read = Batch.from_dict(record)
    built = read.replace(stages=tuple(Stage.from_dict(name, r, "batch 'b1'") for name, r in _stages().items()))

    assert isinstance(read.stages, tuple) and [type(stage) for stage in read.stages] == [Stage] * 3
    assert [stage.name for stage in read.stages] == ["a", "b", "c"]
    assert read == built and hash(read) == hash(built) and repr(read) == repr(built)
    assert read.stage("a") == built.stage("a") and read.stage("a").percentage == 100.0
    assert read.stage("b").extra == {"note": "kept"} and read.stage("missing") is None
    assert read.stage_map() == built.stage_map()
    assert read.to_dict() == built.to_dict() == {**record, **read.to_dict()}
    assert Batch.from_dict(read.to_dict()) == read
    assert pickle.loads(pickle.dumps(read)) == read and copy.copy(read) == read


def test_it_keeps_a_read_batch_apart_from_the_mappings_it_was_read_from_and_written_to():
    record = _record(_stages())
    batch = Batch.from_dict(record)
    record["stages"]["d"] = dict(GOOD)
    batch.to_dict()["stages"]["e"] = dict(GOOD)
    assert [stage.name for stage in batch.stages] == ["a", "b", "c"]
    assert list(batch.to_dict()["stages"]) == ["a", "b", "c"]


@pytest.mark.parametrize("read_from_a_record", [True, False], ids=["read", "built"])
def test_it_puts_a_rewritten_stage_in_its_place_and_a_new_one_last(read_from_a_record):
    batch = Batch.from_dict(_record(_stages()))
    if not read_from_a_record:
        batch = batch.replace(stages=batch.stages)
    again = Stage(name="b", percentage=70.0, first_seen_at=1.0, updated_at=9.0, extra={"note": "kept"})
    new = Stage(name="d", percentage=5.0, first_seen_at=9.0, updated_at=9.0)

    changed = batch.with_stage(again, updated_at=9.0).with_stage(new)

    assert [stage.name for stage in changed.stages] == ["a", "b", "c", "d"]
    assert (changed.stage("b"), changed.stage("d"), changed.updated_at) == (again, new, 9.0)
    assert changed.stage("b").extra == {"note": "kept"}
    assert batch.stage("b").percentage == 50.0 and batch.stage("d") is None  # the original is unchanged
    assert Batch.from_dict(changed.to_dict()) == changed
    assert changed.replace(state="completed").stages == changed.stages


@pytest.mark.parametrize("read_from_a_record", [True, False], ids=["read", "built"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "50"])
def test_it_refuses_a_stage_value_it_could_not_read_back(read_from_a_record, bad):
    batch = Batch.from_dict(_record(_stages()))
    if not read_from_a_record:
        batch = batch.replace(stages=batch.stages)
    with pytest.raises(RecordError) as error:
        batch.with_stage(Stage(name="d", percentage=bad, first_seen_at=1.0, updated_at=1.0))
    assert str(error.value) == "batch 'b1' stage 'd' is malformed"


MALFORMED = {
    "bad-name": ({"a b": GOOD}, "batch 'b1' has an invalid stage entry"),
    "long-name": ({"a" * 65: GOOD}, "batch 'b1' has an invalid stage entry"),
    "not-an-object": ({"a": [50]}, "batch 'b1' has an invalid stage entry"),
    "percentage-text": ({"a": {**GOOD, "percentage": "50"}}, "batch 'b1' stage 'a' is malformed"),
    "percentage-bool": ({"a": {**GOOD, "percentage": True}}, "batch 'b1' stage 'a' is malformed"),
    "updated-infinite": ({"a": {**GOOD, "updated_at": float("inf")}}, "batch 'b1' stage 'a' is malformed"),
    "first-seen-missing": ({"a": {"percentage": 5, "updated_at": 1.0}}, "batch 'b1' stage 'a' is malformed"),
    "completed-text": ({"a": {**GOOD, "completed_at": "x"}}, "batch 'b1' stage 'a' is malformed"),
    "first-bad-named": (
        {"a": GOOD, "b": {**GOOD, "percentage": None}, "c b": GOOD},
        "batch 'b1' stage 'b' is malformed",
    ),
}


@pytest.mark.parametrize("stages, message", MALFORMED.values(), ids=MALFORMED.keys())
def test_it_refuses_a_malformed_stage_record_though_no_stage_is_read(stages, message):
    with pytest.raises(RecordError) as error:
        Batch.from_dict(_record(stages))
    assert str(error.value) == message
