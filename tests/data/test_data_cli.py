"""``gpt2kit prepare`` on the command line: help, a real run, and one-line errors with exit status 2."""

from __future__ import annotations

import json

import pytest

from gpt2kit.cli import main

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def test_help_explains_sources_and_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prepare", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for needle in ("builtin:sotu", "builtin:moby-dick", "hf:HuggingFaceFW/fineweb-edu", "--val-fraction",
                   "--val-tokens", "--shard-tokens", "--workers", "--text-field", "--hf-config", "--overwrite"):
        assert needle in out


def test_prepare_command_writes_a_loadable_directory(tmp_path, jsonl_corpus, docs, capsys, h):
    out = tmp_path / "out"
    rc = main(["prepare", str(jsonl_corpus), "--out", str(out), "--workers", "2", "--shard-tokens", "90",
               "--val-tokens", "30"])
    assert rc == 0
    captured = capsys.readouterr()
    assert f"{out}: {len(docs)} documents" in captured.out
    assert "prepare:" in captured.err  # the progress messages go to stderr
    man = json.loads((out / "manifest.json").read_text())
    assert man["settings"]["val_tokens"] == 30 and man["tokens"] == sum(len(h.encode(d)) + 1 for d in docs)
    from gpt2kit.data.loader import TokenLoader

    x, y = TokenLoader(out, block_size=16, micro_batch_size=2).next_batch()
    assert x.shape == (2, 16)


@pytest.mark.parametrize("argv, pattern", [
    (["{src}", "--out", "{out}", "--val-fraction", "0.1", "--shard-tokens", "77"], "different --val-fraction, "
                                                                                   "--shard-tokens"),
    (["{bad}", "--out", "{tmp}/o2"], r"bad\.jsonl:2: not valid JSON"),
    (["{tmp}/none.jsonl", "--out", "{tmp}/o3"], "no such file or directory"),
    (["builtin:shakespeare", "--out", "{tmp}/o4"], "no such built-in corpus"),
])
def test_errors_are_one_line_with_exit_status_2(tmp_path, jsonl_corpus, capsys, argv, pattern):
    out = tmp_path / "out"
    assert main(["prepare", str(jsonl_corpus), "--out", str(out), "--no-progress"]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{oops}\n')
    capsys.readouterr()
    args = [a.format(src=jsonl_corpus, out=out, bad=bad, tmp=tmp_path) for a in argv]
    assert main(["prepare", *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gpt2kit prepare: error:")
    import re

    assert re.search(pattern, err[0])
