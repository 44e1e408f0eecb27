"""The run folder's bookkeeping, without training: identities, checkpoints, logs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from learner_data import snapshot

from qvl_helpers.config import load_config
from qvl_helpers.runs import (
    COMPLETE_MARKER,
    find_resume_checkpoint,
    identity_changes,
    mark_complete,
    resume_log,
    set_aside,
    start_log,
)


def _checkpoint(run: Path, step: int, complete: bool = True) -> Path:
    folder = run / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * step)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        mark_complete(folder, step)
    return folder


def test_newest_intact_checkpoint_is_found_without_changing_anything(tmp_path: Path) -> None:
    for step in (10, 20, 30):
        _checkpoint(tmp_path, step)
    _checkpoint(tmp_path, 40, complete=False)  # killed while saving
    weights = tmp_path / "checkpoint-30" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut short
    before = snapshot(tmp_path)
    point = find_resume_checkpoint(tmp_path)
    assert point.checkpoint == tmp_path / "checkpoint-20" and point.step == 20
    reasons = {p.name: (kind, why) for p, kind, why in point.rejected}
    assert reasons["checkpoint-40"][0] == "incomplete"
    assert reasons["checkpoint-30"][0] == "corrupt"
    assert reasons["checkpoint-30"][1].startswith("adapter_model.safetensors is 100 bytes")
    assert snapshot(tmp_path) == before  # a finder never renames


def test_same_size_corruption_is_caught_by_the_checksum(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, 5)
    weights = folder / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[7] ^= 0xFF
    weights.write_bytes(bytes(data))
    point = find_resume_checkpoint(tmp_path)
    assert point.checkpoint is None and point.rejected[0][1] == "corrupt"
    assert "checksum" in point.rejected[0][2]


def test_set_aside_keeps_everything(tmp_path: Path) -> None:
    folder = _checkpoint(tmp_path, 3)
    before = snapshot(folder)
    kept = set_aside(folder, "corrupt")
    assert not folder.exists() and kept.name.startswith("corrupt-checkpoint-3-")
    assert snapshot(kept) == before and (kept / COMPLETE_MARKER).exists()


def test_logs_never_hold_a_step_twice_without_a_mark(tmp_path: Path) -> None:
    log = tmp_path / "train_log.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (1, 2, 3, 4)))
    resume_log(tmp_path, 2)
    entries = [json.loads(x) for x in log.read_text().splitlines()]
    assert [e.get("step") for e in entries] == [1, 2, 2]
    assert entries[-1]["event"] == "resume"
    old = start_log(tmp_path)
    assert old == tmp_path / "train_log.attempt-1.jsonl" and not log.exists()
    assert old.read_text().count("\n") == 3
    assert start_log(tmp_path) is None
    log.write_text("{}\n")
    assert start_log(tmp_path) == tmp_path / "train_log.attempt-2.jsonl"  # never replaced


def test_identity_changes_name_what_and_where(clean_env: Path) -> None:
    cfg = load_config(lr=0.01)
    base = {"model": {"name": "tiny", "config_sha256": "a"},
            "data": {"source_sha256": "s", "splits": {"train": "t", "val": "v", "test": "x"}},
            "settings": {"lr": 0.003, "lora_r": 16}, "resolved": {"world_size": 1},
            "where": {"model_path": "/one/place"}}
    now = json.loads(json.dumps(base))
    assert identity_changes(base, now, cfg) == []
    now["where"]["model_path"] = "/another/place"  # moving the project is not a change
    assert identity_changes(base, now, cfg) == []
    now["settings"]["lr"] = 0.01
    now["data"]["splits"]["val"] = "v2"
    now["resolved"]["world_size"] = 2
    changes = identity_changes(base, now, cfg)
    assert "data.splits.val: the file's content changed" in changes
    assert "settings.lr: 0.003 (run) -> 0.01 (now, from load_config() lr=0.01)" in changes
    assert any(c.startswith("processes: the run was launched with 1, now 2") for c in changes)
    assert len(changes) == 3
    early = {"data": {"source_sha256": "other"}, "settings": {"lr": 0.003},
             "where": {"source": "/new/file.jsonl"}}
    base["where"]["source"] = "/old/file.jsonl"
    assert identity_changes(base, early, partial=True) == [
        "data: /old/file.jsonl (run) -> /new/file.jsonl (now)"]


@pytest.mark.parametrize("name", ["run", "收据-1", "a.b_c-d"])
def test_plain_run_names_are_accepted(clean_env: Path, name: str) -> None:
    assert load_config(run_name=name).run_name == name


def test_resume_says_why_there_is_nothing_to_resume(clean_env: Path) -> None:
    """--resume of a run that never began, and of one stopped before its first checkpoint
    (its run.json written, no checkpoint): each says which it is, and neither changes a file."""
    from qvl_helpers.run_plan import TrainingError, plan_run
    from qvl_helpers.runs import run_dir, write_identity

    cfg = load_config(run_name="收据", save_steps=20)
    with pytest.raises(TrainingError, match="there is no run '收据' to resume"):
        plan_run(cfg, resume=True, force=False, say=lambda *a: None)
    folder = run_dir(cfg)
    folder.mkdir(parents=True)
    write_identity(folder, {"model": {"name": "tiny"}})
    before = snapshot(folder)
    with pytest.raises(TrainingError) as caught:
        plan_run(cfg, resume=True, force=False, say=lambda *a: None)
    said = str(caught.value)
    assert "has no checkpoint to resume from" in said and "every 20 steps" in said
    assert "without --resume" in said and snapshot(folder) == before
