"""A disk that fills up: atomic writes keep the old file, `prepare` stops with one line and resumes.

Two ways to fill the disk: an OSError(ENOSPC) injected into the write path (in this process), and
RLIMIT_FSIZE in a forked child, so the kernel itself refuses the write (EFBIG) wherever it happens,
including inside torch's C++ checkpoint writer (see test_train_faults.py for checkpoints).
"""

from __future__ import annotations

import builtins
import errno
import os
from pathlib import Path

import pytest
import torch
from reliability_harness import dir_files, write_corpus

from gpt2kit.checkpoint import load_model, save_checkpoint
from gpt2kit.cli import main
from gpt2kit.io import atomic_write_bytes, atomic_write_text
from gpt2kit.model import GPT, GPTConfig

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def _enospc(path="") -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def _temp_files(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir() if ".tmp." in p.name)


@pytest.mark.parametrize("where", ["write", "fsync", "rename"])
def test_atomic_write_that_fails_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch, where):
    target = tmp_path / "state.json"
    atomic_write_text(target, "old contents\n")
    if where == "write":
        real = Path.write_bytes

        def half_then_full(self, data):
            real(self, data[: len(data) // 2])
            raise _enospc(self)

        monkeypatch.setattr(Path, "write_bytes", half_then_full)
    elif where == "fsync":  # delayed allocation: the error surfaces when the data is flushed
        monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(_enospc()))
    else:
        monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(_enospc(b)))
    with pytest.raises(OSError) as e:
        atomic_write_bytes(target, b"new contents that do not fit\n" * 100)
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert target.read_text() == "old contents\n"
    assert _temp_files(tmp_path) == []


def test_checkpoint_overwrite_on_a_full_disk_keeps_the_old_checkpoint_loadable(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny"))
    path = tmp_path / "model.pt"
    save_checkpoint(path, {"model_config": model.config.to_dict(), "model": model.state_dict()})
    before = path.read_bytes()
    real_save = torch.save

    def save_until_full(obj, f, *a, **kw):
        import io

        buf = io.BytesIO()
        real_save(obj, buf)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])  # a third fits on the disk
        raise _enospc(f)

    monkeypatch.setattr(torch, "save", save_until_full)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    with pytest.raises(OSError):
        save_checkpoint(path, {"model_config": model.config.to_dict(), "model": model.state_dict()})
    monkeypatch.undo()
    assert path.read_bytes() == before and _temp_files(tmp_path) == []
    loaded = load_model(path).model
    assert not torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)


def test_prepare_on_a_full_disk_says_so_in_one_line_and_resumes_to_identical_output(tmp_path, capsys, monkeypatch):
    corpus = write_corpus(tmp_path / "corpus.jsonl", num_docs=200, words_per_doc=150)
    argv = ["prepare", str(corpus), "--shard-tokens", "2000", "--val-fraction", "0.05", "--workers", "1",
            "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "ref")]) == 0
    out = tmp_path / "out"
    import gpt2kit.data.shards as shards

    real_open = builtins.open
    shard_writes = [0]

    def full_after_ten_shards(file, mode="r", *a, **kw):
        if "w" in mode and Path(file).name.startswith(".train_"):
            shard_writes[0] += 1
            if shard_writes[0] > 10:
                raise _enospc(file)
        return real_open(file, mode, *a, **kw)

    monkeypatch.setattr(shards, "open", full_after_ten_shards, raising=False)
    capsys.readouterr()
    rc = main([*argv, "--out", str(out)])
    err = capsys.readouterr().err
    monkeypatch.undo()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert "No space left on device" in lines[0] and "re-run" in lines[0], lines[0]
    assert (out / "progress.json").exists() and not (out / "manifest.json").exists()
    assert _temp_files(out) == []
    assert main([*argv, "--out", str(out)]) == 0
    assert dir_files(out) == dir_files(tmp_path / "ref")


def test_prepare_under_a_file_size_limit_fails_cleanly_and_resumes(forkserver, tmp_path):
    """The kernel refuses the write (RLIMIT_FSIZE): progress.json outgrows the limit part-way through."""
    corpus = write_corpus(tmp_path / "corpus.jsonl", num_docs=150, words_per_doc=300)
    argv = ["prepare", corpus, "--shard-tokens", "2000", "--val-fraction", "0.05", "--workers", "1", "--no-progress"]
    r = forkserver.run([*argv, "--out", tmp_path / "ref"])
    assert r.returncode == 0, r.log
    out = tmp_path / "out"
    r = forkserver.run([*argv, "--out", out], hooks={"fsize_limit": 8_000})
    lines = [ln for ln in r.log.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "Traceback" not in r.log, r.log
    assert str(out) in lines[0] and "File too large" in lines[0] and "re-run" in lines[0], lines[0]
    assert not (out / "manifest.json").exists()
    assert (out / "progress.json").stat().st_size <= 8_000  # the last progress.json that fitted, intact
    r = forkserver.run([*argv, "--out", out])
    assert r.returncode == 0, r.log
    assert dir_files(out) == dir_files(tmp_path / "ref")
