"""A run directory's checkpoints: listing, pruning, best.json, stale temporary files, and where --resume starts."""

from __future__ import annotations

import os

import pytest

from gpt2kit.checkpoint import (
    CHECKPOINT_DIR,
    best_checkpoint,
    find_resume,
    latest_checkpoint,
    list_step_checkpoints,
    prune_step_checkpoints,
    save_checkpoint,
    step_checkpoint_path,
    write_best,
    write_sharded_meta,
)
from gpt2kit.checkpoint.run_dir import BEST_FILE, best_record, remove_stale_temp_files
from gpt2kit.errors import UserError

NO_SUCH_PID = 2**22 + 1  # above the largest pid_max Linux allows


def test_step_checkpoints_are_listed_by_step_and_nothing_else_is(tmp_path, write_step):
    run = tmp_path / "run"
    assert list_step_checkpoints(run) == [] and latest_checkpoint(run) is None
    paths = [write_step(run, s) for s in (10, 2)]
    sharded = step_checkpoint_path(run, 11, sharded=True)
    sharded.mkdir()
    cdir = run / CHECKPOINT_DIR
    (cdir / "step_00000012.dcp").write_bytes(b"")  # a sharded name that is a file
    (cdir / "step_00000013.pt").mkdir()  # a file name that is a directory
    (cdir / ".step_00000014.pt.tmp.123").write_bytes(b"")
    (cdir / "step_x.pt").write_bytes(b"")
    assert list_step_checkpoints(run) == [paths[1], paths[0], sharded]
    assert latest_checkpoint(run) == sharded


def test_pruning_keeps_the_best_and_the_last_n(tmp_path, write_step):
    run = tmp_path / "run"
    paths = [write_step(run, s) for s in range(1, 6)]
    write_best(run, paths[1], 2, 3.25)
    deleted = prune_step_checkpoints(run, keep_last=2)
    assert deleted == [paths[0], paths[2]]
    assert list_step_checkpoints(run) == [paths[1], paths[3], paths[4]]
    assert best_checkpoint(run) == paths[1]


def test_pruning_deletes_a_sharded_checkpoint_whole(tmp_path, write_step):
    run = tmp_path / "run"
    old = step_checkpoint_path(run, 1, sharded=True)
    old.mkdir(parents=True)
    (old / "__0_0.distcp").write_bytes(b"x")
    new = write_step(run, 2)
    assert prune_step_checkpoints(run, keep_last=1) == [old]
    assert sorted(p.name for p in (run / CHECKPOINT_DIR).iterdir()) == [new.name]


def test_best_json_is_read_defensively(tmp_path, write_step):
    run = tmp_path / "run"
    path = write_step(run, 4)
    assert best_record(run) is None and best_checkpoint(run) is None
    write_best(run, path, 4, 2.5)
    assert best_record(run) == {"file": path.name, "step": 4, "val_loss": 2.5}
    best = run / CHECKPOINT_DIR / BEST_FILE
    for garbage in ("{", "[1, 2]", '{"file": 5}', '{"step": 4}'):
        best.write_text(garbage)
        assert best_checkpoint(run) is None, garbage
    best.write_text('{"file": "../../elsewhere/step_00000004.pt"}')  # only a name inside checkpoints/ counts
    assert best_checkpoint(run) == path


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    cdir = tmp_path / CHECKPOINT_DIR
    cdir.mkdir()
    dead_file = cdir / f".step_00000003.pt.tmp.{NO_SUCH_PID}"
    dead_dir = cdir / f".step_00000004.dcp.tmp.{NO_SUCH_PID}"
    mine = cdir / f".step_00000005.pt.tmp.{os.getpid()}"
    alive = cdir / f".step_00000006.pt.tmp.{os.getppid()}"
    dead_file.write_bytes(b"x")
    dead_dir.mkdir()
    (dead_dir / "__0_0.distcp").write_bytes(b"x")
    mine.write_bytes(b"x")
    alive.write_bytes(b"x")
    remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in cdir.iterdir()) == sorted([mine.name, alive.name])


def test_resume_none_or_auto_without_checkpoints_is_a_fresh_start(tmp_path):
    assert find_resume(tmp_path, None) is None and find_resume(tmp_path, "") is None
    assert find_resume(tmp_path / "new", "auto") is None


def test_resume_auto_and_a_run_directory_continue_from_the_latest_not_the_best(tmp_path, write_step):
    run = tmp_path / "run"
    paths = [write_step(run, s) for s in (1, 2, 3)]
    write_best(run, paths[0], 1, 1.0)
    for point in (find_resume(run, "auto"), find_resume(tmp_path / "elsewhere", str(run))):
        assert point.path == paths[2] and point.checkpoint["step"] == 3


def test_resume_from_a_file_or_a_sharded_directory(tmp_path, write_step, small_model):
    path = write_step(tmp_path / "run", 2)
    assert find_resume(tmp_path / "other", str(path)).path == path
    sharded = tmp_path / "step_00000007.dcp"  # the metadata alone: resume reads the tensors later, per rank
    sharded.mkdir()
    write_sharded_meta(sharded, {"model_config": small_model.config.to_dict(), "optimizer_param_groups": [],
                                 "step": 7, "config": {}})
    point = find_resume(tmp_path, str(sharded))
    assert point.path == sharded and point.checkpoint["step"] == 7


def test_resume_from_nothing_or_from_weights_alone_says_why(tmp_path, small_model):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match=r"no checkpoints/step_\*\.pt or \.dcp in this directory; use --resume auto"):
        find_resume(tmp_path, str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"no such checkpoint file or run directory$"):
        find_resume(tmp_path, str(tmp_path / "missing"))
    weights = tmp_path / "weights.pt"
    save_checkpoint(weights, {"model_config": small_model.config.to_dict(), "model": {}})
    with pytest.raises(UserError, match=r"weights\.pt: has weights but no training state \(optimizer, step, config "
                                        r"missing\), so training cannot resume from it"):
        find_resume(tmp_path, str(weights))
