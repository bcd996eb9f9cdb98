"""Bad input gives one clear line naming the file and a non-zero exit, never a traceback or a wrong result.

Shards (corrupt, truncated, empty, swapped, missing), manifests that disagree with their shards,
JSONL with invalid lines, wrong types, huge lines and non-UTF-8 bytes, and checkpoints that are
damaged, from another model size or carry a pickled object meant to run code.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_harness import write_corpus

from gpt2kit.checkpoint import load_model, save_checkpoint
from gpt2kit.cli import main
from gpt2kit.data.loader import TokenLoader
from gpt2kit.data.prepare import prepare
from gpt2kit.errors import UserError
from gpt2kit.model import GPT, GPTConfig

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier


def one_line_error(argv: list, capsys) -> str:
    """Run ``gpt2kit ARGV`` in this process; it must fail with exit 2 and exactly one ``error:`` line."""
    capsys.readouterr()
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, f"exit {rc}, stderr:\n{err}"
    assert len(lines) == 1 and ": error: " in lines[0], f"not one error line:\n{err[:3000]}"
    assert "Traceback" not in err
    assert len(lines[0]) < 1000, f"an error line of {len(lines[0])} characters is not a clear message"
    return lines[0]


# ---------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """A small prepared data directory (several train and val shards), never modified."""
    root = tmp_path_factory.mktemp("pristine")
    corpus = write_corpus(root / "corpus.jsonl", num_docs=60, words_per_doc=60)
    prepare([corpus], root / "data", shard_tokens=400, val_fraction=0.3, workers=1, progress=False)
    return root / "data"


@pytest.fixture
def data(pristine, tmp_path) -> Path:
    """A fresh copy of the prepared directory for one test to damage."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A tiny gpt2kit checkpoint file."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset("tiny"))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, {"model_config": model.config.to_dict(), "model": model.state_dict()})
    return path


def manifest(data: Path) -> dict:
    return json.loads((data / "manifest.json").read_text())


def write_manifest(data: Path, man: dict) -> None:
    (data / "manifest.json").write_text(json.dumps(man))


def eval_argv(data: Path, ckpt: Path) -> list:
    return ["eval", "loss", "--data", data, "--split", "val", "--checkpoint", ckpt, "--block-size", "16",
            "--batch-size", "2"]


# ---------------------------------------------------------------------------------------------- shards


def _flip(p: Path) -> None:
    b = bytearray(p.read_bytes())
    b[1024 + len(b[1024:]) // 2] ^= 0x01  # one bit of one token in the middle
    p.write_bytes(bytes(b))


SHARD_DAMAGE = {
    "bit flip": (_flip, "checksum mismatch"),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:-10]), "truncated or corrupt"),
    "truncated header": (lambda p: p.write_bytes(p.read_bytes()[:500]), "truncated"),
    "empty": (lambda p: p.write_bytes(b""), "truncated"),
    "bad header": (lambda p: p.write_bytes(b"\x00" * 4 + p.read_bytes()[4:]), "bad header"),
    "bytes appended": (lambda p: p.write_bytes(p.read_bytes() + b"\x01\x02"), "truncated or corrupt"),
    "missing": (lambda p: p.unlink(), "missing"),
    "a directory": (lambda p: (p.unlink(), p.mkdir()), r"bytes but the manifest|not a|directory"),
    "swapped with another shard": (
        lambda p: p.write_bytes((p.parent / p.name.replace("000000", "000001")).read_bytes()),
        "checksum mismatch|manifest records|truncated or corrupt"),
}


@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_damaged_val_shard_is_one_clear_error_in_eval(data, ckpt, capsys, damage):
    fn, pattern = SHARD_DAMAGE[damage]
    shard = data / "val_000000.bin"
    fn(shard)
    line = one_line_error(eval_argv(data, ckpt), capsys)
    assert str(shard) in line
    assert re.search(pattern, line), line


@pytest.mark.parametrize("damage", list(SHARD_DAMAGE))
def test_damaged_train_shard_is_refused_by_the_loader(data, damage):
    fn, pattern = SHARD_DAMAGE[damage]
    shard = data / "train_000000.bin"
    fn(shard)
    with pytest.raises(UserError, match=pattern) as e:
        TokenLoader(data, block_size=16, micro_batch_size=2)
    assert str(shard) in str(e.value)


# ---------------------------------------------------------------------------------------------- manifests


def _edit(fn):
    def apply(data: Path) -> None:
        man = manifest(data)
        fn(man)
        write_manifest(data, man)
    return apply


def _first(man: dict, split: str = "val") -> dict:
    return man["splits"][split]["shards"][0]


def _set_tokens(man: dict) -> None:
    e = _first(man)
    e["tokens"] += 1
    e["bytes"] += 2
    man["splits"]["val"]["tokens"] += 1


def _swap_names(man: dict) -> None:
    a, b = man["splits"]["val"]["shards"][:2]
    a["file"], b["file"] = b["file"], a["file"]


MANIFEST_DAMAGE = {
    "token count off by one": (_edit(_set_tokens), "manifest records"),
    "byte count wrong": (_edit(lambda m: _first(m).update(bytes=_first(m)["bytes"] + 2)), "manifest records"),
    "checksum of another file": (_edit(lambda m: _first(m).update(sha256="0" * 64)), "checksum mismatch"),
    "two entries swap file names": (_edit(_swap_names), "manifest records|checksum|truncated or corrupt"),
    "lists a shard that does not exist": (
        _edit(lambda m: m["splits"]["val"]["shards"].append({**_first(m), "file": "val_000099.bin"})
              or m["splits"]["val"].update(tokens=m["splits"]["val"]["tokens"] + _first(m)["tokens"])), "missing"),
    "split total disagrees": (_edit(lambda m: m["splits"]["val"].update(tokens=1)), "records 1 tokens but its shards"),
    "path outside the directory": (_edit(lambda m: _first(m).update(file="../../etc/passwd")), "not a plain file name"),
    "token count is a string": (_edit(lambda m: _first(m).update(tokens="12")), "without file/tokens/sha256"),
    "shards is null": (_edit(lambda m: m["splits"]["val"].update(shards=None)), "lacks"),
    "no train split": (_edit(lambda m: m["splits"].pop("train")), "no \"splits\" with a \"train\""),
    "other tokenizer": (_edit(lambda m: m.update(tokenizer="cl100k_base")), "tokenizer='cl100k_base'"),
    "other vocab size": (_edit(lambda m: m.update(vocab_size=32000)), "vocab_size=32000"),
    "newer format": (_edit(lambda m: m.update(format_version=99)), "newer than this gpt2kit"),
    "a JSON list": (lambda d: (d / "manifest.json").write_text("[1, 2]"), "not a gpt2kit data manifest"),
    "truncated JSON": (lambda d: (d / "manifest.json").write_bytes((d / "manifest.json").read_bytes()[:200]),
                       "not valid JSON"),
    "empty file": (lambda d: (d / "manifest.json").write_bytes(b""), "not valid JSON"),
    "not UTF-8": (lambda d: (d / "manifest.json").write_bytes(b"\xff\xfe{}"), "not UTF-8"),
    "deleted (run unfinished)": (lambda d: (d / "manifest.json").rename(d / "progress.json"), "unfinished"),
    "deleted": (lambda d: (d / "manifest.json").unlink(), "not a prepared data directory"),
}


@pytest.mark.parametrize("damage", list(MANIFEST_DAMAGE))
def test_manifest_that_disagrees_with_its_shards_is_one_clear_error(data, ckpt, capsys, damage):
    fn, pattern = MANIFEST_DAMAGE[damage]
    fn(data)
    line = one_line_error(eval_argv(data, ckpt), capsys)
    assert str(data) in line
    assert re.search(pattern, line), line


def test_rerunning_prepare_over_a_corrupt_manifest_asks_for_overwrite(tmp_path, capsys):
    corpus = write_corpus(tmp_path / "c.jsonl", 20, 40)
    out = tmp_path / "out"
    assert main(["prepare", str(corpus), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    (out / "manifest.json").write_text("{ not json")
    line = one_line_error(["prepare", corpus, "--out", out, "--workers", "1", "--no-progress"], capsys)
    assert "manifest.json" in line and "--overwrite" in line


# ---------------------------------------------------------------------------------------------- JSONL input


def _jsonl(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


GOOD = b'{"text": "a good line"}'
BAD_JSONL = {
    "invalid JSON": (_jsonl([GOOD, GOOD, b'{"text": "unterminated']), r"corpus\.jsonl:3: not valid JSON"),
    "trailing garbage": (_jsonl([GOOD, b'{"text": "x"} extra']), r"corpus\.jsonl:2: not valid JSON"),
    "a list, not an object": (_jsonl([GOOD, b'["text", "x"]']), r":2: expected a JSON object"),
    "a bare string": (_jsonl([b'"just a string"']), r":1: expected a JSON object"),
    "text is a number": (_jsonl([GOOD, b'{"text": 42}']), r":2: field 'text' is int, not a string"),
    "text is null": (_jsonl([b'{"text": null}']), r":1: field 'text' is NoneType, not a string"),
    "text is an object": (_jsonl([b'{"text": {"nested": "x"}}']), r":1: field 'text' is dict"),
    "no text field": (_jsonl([GOOD, b'{"body": "x"}']), r":2: no 'text' field .*--text-field"),
    "non-UTF-8 bytes": (_jsonl([GOOD, b'{"text": "caf\xe9 latin-1"}']), r":2: not UTF-8"),
    "UTF-16 file": ('{"text": "hello"}\n'.encode("utf-16"), r"corpus\.jsonl:1: not (UTF-8|valid JSON)"),
    "huge invalid line": (_jsonl([GOOD, b'{"text": "' + b"x" * 3_000_000]), r":2: not valid JSON"),
    "huge key, no text field": (_jsonl([b'{"' + b"k" * 3_000_000 + b'": 1}']), r":1: no 'text' field"),
    "only blank lines": (b"\n\n  \n", r"no documents found"),
    "only empty texts": (_jsonl([b'{"text": ""}'] * 3), r"no documents found"),
    "empty file": (b"", r"no documents found"),
}


@pytest.mark.parametrize("case", list(BAD_JSONL))
def test_bad_jsonl_is_one_clear_error_naming_the_line_and_leaves_no_finished_output(tmp_path, capsys, case):
    content, pattern = BAD_JSONL[case]
    src = tmp_path / "corpus.jsonl"
    src.write_bytes(content)
    out = tmp_path / "out"
    line = one_line_error(["prepare", src, "--out", out, "--workers", "1", "--no-progress"], capsys)
    assert re.search(pattern, line), line
    assert not (out / "manifest.json").exists()


def test_truncated_gzip_jsonl_is_one_clear_error(tmp_path, capsys):
    src = tmp_path / "corpus.jsonl.gz"
    whole = gzip.compress(write_corpus(tmp_path / "c.jsonl", num_docs=200, words_per_doc=50).read_bytes())
    assert len(whole) > 5_000
    src.write_bytes(whole[: len(whole) // 2])
    line = one_line_error(["prepare", src, "--out", tmp_path / "out", "--workers", "1", "--no-progress"], capsys)
    assert "corrupt or truncated" in line and str(src) in line


def test_non_utf8_text_file_is_one_clear_error(tmp_path, capsys):
    src = tmp_path / "book.txt"
    src.write_bytes("naïve".encode("latin-1"))
    line = one_line_error(["prepare", src, "--out", tmp_path / "out", "--workers", "1", "--no-progress"], capsys)
    assert "not UTF-8" in line and str(src) in line


def test_huge_valid_line_is_tokenized_exactly(tmp_path):
    """A single 4 MB document is data, not an error: every token lands in the shards."""
    from gpt2kit.tokenizer import get_tokenizer

    text = " ".join(f"word{i % 977} 東京 🐋" for i in range(400_000))
    src = tmp_path / "corpus.jsonl"
    src.write_text(json.dumps({"text": "short"}) + "\n" + json.dumps({"text": text}, ensure_ascii=False) + "\n")
    man = prepare([src], tmp_path / "out", shard_tokens=1_000_000, val_fraction=0.0, workers=1, progress=False)
    tok = get_tokenizer()
    assert man["tokens"] == len(tok.encode("short")) + len(tok.encode(text)) + 2
    stream = np.concatenate([np.fromfile(tmp_path / "out" / e["file"], dtype="<u2", offset=1024)
                             for e in man["splits"]["train"]["shards"]])
    assert tok.decode(stream[len(tok.encode("short")) + 2:].tolist()) == text


def test_lone_surrogate_escape_in_valid_json_is_tokenized_not_a_crash(tmp_path):
    """``"\\ud800"`` is valid JSON that decodes to a lone surrogate; the GPT-2 tokenizer replaces it."""
    from gpt2kit.tokenizer import get_tokenizer

    src = tmp_path / "corpus.jsonl"
    src.write_bytes(_jsonl([b'{"text": "before \\ud800 after"}', GOOD]))
    man = prepare([src], tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    tok = get_tokenizer()
    assert man["tokens"] == len(tok.encode("before \ud800 after")) + len(tok.encode("a good line")) + 2


def test_bom_and_crlf_are_accepted(tmp_path):
    src = tmp_path / "corpus.jsonl"
    src.write_bytes(b"\xef\xbb\xbf" + GOOD + b"\r\n" + GOOD + b"\r\n")
    man = prepare([src], tmp_path / "out", val_fraction=0.0, workers=1, progress=False)
    assert man["documents"] == 2


# ---------------------------------------------------------------------------------------------- checkpoints


class _RunsCode:
    """Unpickling this calls ``exec`` on a script that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('code ran')",))


def _evil_files(d: Path, marker: Path, good: Path) -> dict[str, Path]:
    """Files that run code when unpickled, in every form a --checkpoint can take."""
    d.mkdir(parents=True, exist_ok=True)
    evil = _RunsCode(marker)
    out = {}
    out["whole object"] = d / "whole.pt"
    torch.save(evil, out["whole object"])
    real = torch.load(good, weights_only=True)
    out["inside a real checkpoint"] = d / "nested.pt"
    torch.save({**real, "config": {"note": evil}}, out["inside a real checkpoint"])
    out["legacy (non-zip) format"] = d / "legacy.pt"
    torch.save({**real, "hook": evil}, out["legacy (non-zip) format"], _use_new_zipfile_serialization=False)
    import pickle

    out["plain pickle"] = d / "plain.pt"
    out["plain pickle"].write_bytes(pickle.dumps(evil))
    run = d / "run"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({**real, "optimizer": evil}, run / "checkpoints" / "step_00000010.pt")
    out["latest checkpoint of a run directory"] = run
    hf = d / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32,
                                                "n_positions": 64, "vocab_size": 50257}))
    torch.save({"transformer.wte.weight": evil}, hf / "pytorch_model.bin")
    out["Hugging Face pytorch_model.bin"] = hf
    return out


EVIL_KINDS = ["whole object", "inside a real checkpoint", "legacy (non-zip) format", "plain pickle",
              "latest checkpoint of a run directory", "Hugging Face pytorch_model.bin"]


def test_the_malicious_payload_really_runs_code_when_unpickled_unsafely(tmp_path, ckpt):
    """Guards the tests below: without weights_only, these files do execute code."""
    marker = tmp_path / "marker"
    files = _evil_files(tmp_path / "evil", marker, ckpt)
    torch.load(files["inside a real checkpoint"], weights_only=False)
    assert marker.read_text() == "code ran"


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch notes the plain pickle's protocol
@pytest.mark.parametrize("kind", EVIL_KINDS)
def test_checkpoint_with_code_is_refused_and_the_code_never_runs(tmp_path, ckpt, capsys, kind):
    marker = tmp_path / "marker"
    target = _evil_files(tmp_path / "evil", marker, ckpt)[kind]
    line = one_line_error(["sample", "--checkpoint", target, "--max-new-tokens", "2"], capsys)
    assert str(target) in line
    with pytest.raises(UserError):
        load_model(target)
    assert not marker.exists(), "loading a checkpoint executed code from it"


def test_safetensors_is_preferred_over_a_malicious_bin(tmp_path, ckpt):
    from safetensors.torch import save_file

    marker = tmp_path / "marker"
    hf = _evil_files(tmp_path / "evil", marker, ckpt)["Hugging Face pytorch_model.bin"]
    from gpt2kit.checkpoint import model_state_dict
    from gpt2kit.model.hf_keys import state_dict_to_hf

    model = load_model(ckpt).model
    hf_sd = state_dict_to_hf(model_state_dict(model), model.config)
    save_file({k: v.contiguous() for k, v in hf_sd.items()}, str(hf / "model.safetensors"))
    loaded = load_model(hf)
    assert torch.equal(loaded.model.transformer.wte.weight, model.transformer.wte.weight)
    assert not marker.exists()


def test_best_json_cannot_point_outside_the_run_directory(tmp_path, ckpt):
    marker = tmp_path / "marker"
    files = _evil_files(tmp_path / "evil", marker, ckpt)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpt, run / "checkpoints" / "step_00000001.pt")
    (run / "checkpoints" / "best.json").write_text(json.dumps({"file": str(files["whole object"]), "step": 1}))
    assert load_model(run).source == str(run / "checkpoints" / "step_00000001.pt")
    assert not marker.exists()


def _resized(ckpt: Path, dest: Path, **fields) -> Path:
    c = torch.load(ckpt, weights_only=True)
    c["model_config"] = {**c["model_config"], **fields}
    torch.save(c, dest)
    return dest


def _hf_dir_with_config(ckpt: Path, dest: Path, **fields) -> Path:
    assert main(["export", "--checkpoint", str(ckpt), "--out", str(dest)]) == 0
    cfg = json.loads((dest / "config.json").read_text())
    (dest / "config.json").write_text(json.dumps({**cfg, **fields}))
    return dest


def _hf_bin(d: Path, data: bytes) -> Path:
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2, "n_head": 2, "n_embd": 32,
                                               "n_positions": 64, "vocab_size": 50257}))
    (d / "pytorch_model.bin").write_bytes(data)
    return d


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


BAD_CHECKPOINTS = {
    "weights of a narrower model": (lambda c, d: _resized(c, d / "x.pt", n_embd=64), r"different model size"),
    "weights of a shallower model": (lambda c, d: _resized(c, d / "x.pt", n_layer=4), r"do not match the model config"),
    "config of another vocab": (lambda c, d: _resized(c, d / "x.pt", vocab_size=50304, padded_vocab_size=50304),
                                r"different model size"),
    "impossible config": (lambda c, d: _resized(c, d / "x.pt", n_head=3), r"no valid model_config"),
    "unknown config field": (lambda c, d: _resized(c, d / "x.pt", n_experts=8), r"no valid model_config"),
    "HF config of a wider model": (lambda c, d: _hf_dir_with_config(c, d / "hf", n_embd=64), r"shape|size"),
    "truncated": (lambda c, d: _file(d / "x.pt", c.read_bytes()[: c.stat().st_size // 2]), r"truncated or corrupt"),
    "empty": (lambda c, d: _file(d / "x.pt", b""), r"truncated or corrupt"),
    "random bytes": (lambda c, d: _file(d / "x.pt", random.Random(0).randbytes(5000)), r"truncated or corrupt"),
    "HF dir with a random pytorch_model.bin": (lambda c, d: _hf_bin(d / "hf", random.Random(1).randbytes(5000)),
                                               r"truncated or corrupt"),
    "a text file": (lambda c, d: _file(d / "x.pt", b"hello"), r"truncated or corrupt"),
    "not a gpt2kit dict": (lambda c, d: torch.save({"weights": torch.zeros(3)}, d / "x.pt") or d / "x.pt",
                           r"not a gpt2kit checkpoint"),
    "newer format": (lambda c, d: torch.save({**torch.load(c, weights_only=True), "format_version": 7}, d / "x.pt")
                     or d / "x.pt", r"newer than this gpt2kit"),
    "another tokenizer": (lambda c, d: torch.save({**torch.load(c, weights_only=True), "tokenizer": "llama"},
                                                  d / "x.pt") or d / "x.pt", r"tokenizer 'llama'"),
    "empty run directory": (lambda c, d: (d / "run").mkdir() or d / "run", r"not a gpt2kit run directory"),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_bad_checkpoint_is_one_clear_error(tmp_path, ckpt, capsys, case):
    make, pattern = BAD_CHECKPOINTS[case]
    target = make(ckpt, tmp_path)
    line = one_line_error(["sample", "--checkpoint", target, "--max-new-tokens", "2"], capsys)
    assert str(target) in line
    assert re.search(pattern, line), line


# ------------------------------------------------------------------------------------- flags and values


@pytest.mark.parametrize("argv, line", [
    (["train", "--batchsize", "8"], "gpt2kit train: error: unknown flag --batchsize; did you mean --batch-size?"),
    (["train", "--n_layer", "2"], "gpt2kit train: error: unknown flag --n_layer; did you mean --n-layer?"),
    (["finetune", "sft", "--max_steps=3"], "gpt2kit finetune sft: error: unknown flag --max_steps; did you mean "
                                           "--max-steps?"),
    (["train", "--lr=abc"], "gpt2kit train: error: argument --lr: invalid float value: 'abc'"),
    (["prepare", "x.txt", "--out", "d", "--shard-tokens", "many"], "gpt2kit prepare: error: argument --shard-tokens: "
                                                                   "'many' is not an integer"),
])
def test_unknown_flag_or_bad_value_is_one_line_naming_the_flag(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.splitlines() == [f"{line} (see {' '.join(['gpt2kit'] + argv[:2 if argv[0] == 'finetune' else 1])} "
                                "--help)"]


def test_a_suggested_flag_is_one_the_command_takes(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--n_layer", "2"])
    suggested = capsys.readouterr().err.split("did you mean ")[1].split("?")[0]
    assert main(["train", "--preset", "demo-cpu", "--out", "x", suggested, "2", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["n_layer"] == 2


# ------------------------------------------------------------------------------------- one command per directory


def test_second_prepare_into_a_directory_in_use_is_refused_naming_the_holder(tmp_path, capsys):
    import os
    import signal
    import subprocess
    import sys

    corpus = write_corpus(tmp_path / "corpus.jsonl", num_docs=10, words_per_doc=40)
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom gpt2kit.io import dir_lock\n"
         f"with dir_lock({str(out)!r}, 'prepare'):\n    print('held', flush=True)\n    time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        line = one_line_error(["prepare", corpus, "--out", out, "--workers", "1", "--no-progress"], capsys)
        assert line == (f"gpt2kit prepare: error: --out {out}: in use by `gpt2kit prepare` (PID {holder.pid}); "
                        "wait for it to finish or stop it, or choose another --out")
        assert not (out / "manifest.json").exists()
    finally:
        os.kill(holder.pid, signal.SIGKILL)  # the kernel releases the lock of a killed holder
        holder.wait()
    assert (out / ".gpt2kit.lock").exists(), "a killed holder leaves its lock file behind"
    assert main(["prepare", str(corpus), "--out", str(out), "--workers", "1", "--no-progress"]) == 0
    assert not (out / ".gpt2kit.lock").exists(), "the lock file is removed on release"


@pytest.mark.parametrize("argv, pattern", [
    (["eval", "hellaswag", "--checkpoint", "{ckpt}", "--data", "{dir}"], r"--data {dir}: no such file"),
    (["eval", "lambada", "--checkpoint", "{ckpt}", "--data", "{dir}"], r"--data {dir}: no such file"),
    (["classify", "--checkpoint", "{ckpt}", "--file", "{dir}"], r"--file {dir}: file not found"),
    (["finetune", "sft", "--checkpoint", "{ckpt}", "--train", "{dir}", "--val", "{dir}", "--out", "{tmp}/run"],
     r"{dir}: file not found"),
])
def test_a_directory_where_a_file_is_expected_is_file_not_found(argv, pattern, tmp_path, ckpt, capsys):
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    fill = {"{ckpt}": str(ckpt), "{dir}": str(folder), "{tmp}": str(tmp_path)}
    argv = [fill.get(a, a.replace("{tmp}", str(tmp_path))) for a in argv]
    line = one_line_error(argv, capsys)
    assert re.search(pattern.replace("{dir}", re.escape(str(folder))), line), line


# ------------------------------------------------------------------------------ train: the advice names the right flag


def test_train_on_a_text_file_advises_prepare_into_a_new_directory(tmp_path, capsys):
    text = tmp_path / "moby.txt"
    text.write_text("Call me Ishmael.\n")
    line = one_line_error(["train", "--preset", "demo-cpu", "--data", text, "--out", tmp_path / "run"], capsys)
    assert f"`gpt2kit prepare {text} --out data/moby` and pass data/moby" in line


def test_train_hellaswag_that_is_a_directory_advises_the_hellaswag_flag(pristine, tmp_path, capsys):
    folder = tmp_path / "hs"
    folder.mkdir()
    line = one_line_error(["train", "--preset", "demo-cpu", "--data", pristine, "--out", tmp_path / "run",
                           "--hellaswag", folder], capsys)
    assert f"--hellaswag {folder}: no such file" in line and "(--hellaswag FILE)" in line and "--data" not in line


def test_train_hellaswag_download_offline_advises_the_hellaswag_flag(pristine, tmp_path, capsys, monkeypatch):
    import gpt2kit.eval.hellaswag as hs

    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(hs, "HELLASWAG_URL", "http://127.0.0.1:9/hellaswag_val.jsonl")  # nothing listens there
    line = one_line_error(["train", "--preset", "demo-cpu", "--data", pristine, "--out", tmp_path / "run",
                           "--hellaswag", "download"], capsys)
    assert "pass --hellaswag FILE" in line and "--data" not in line


@pytest.mark.parametrize("flags, expected", [
    (["--n-layer", "4"], "--n-layer 4: --init-from {src} has n_layer=2; drop --n-layer"),
    (["--block-size", "128"], "--block-size 128: --init-from {src} has position embeddings for 64 tokens only; "
                              "use --block-size 64 or less"),
])
def test_init_from_with_a_contradicting_shape_flag_is_one_line(hf_tiny_dir, tmp_path, capsys, flags, expected):
    line = one_line_error(["train", "--init-from", hf_tiny_dir, "--out", tmp_path / "run", *flags,
                           "--print-config"], capsys)
    assert expected.format(src=hf_tiny_dir) in line


def test_epochs_with_max_steps_is_one_line(tmp_path, capsys):
    line = one_line_error(["train", "--preset", "demo-cpu", "--out", tmp_path, "--epochs", "2", "--max-steps", "5",
                           "--print-config"], capsys)
    assert "--epochs sets the schedule's length from the data; drop --max-steps or drop --epochs" in line


def test_config_file_with_an_unknown_key_names_it_and_the_closest_setting(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text(json.dumps({"preset": "demo-cpu", "n_layers": 4}))
    line = one_line_error(["train", "--config", tmp_path / "cfg.json", "--print-config"], capsys)
    assert "unknown setting 'n_layers'; did you mean 'n_layer'?" in line


def test_a_huge_gradient_accumulation_is_said_before_the_first_step(pristine, tmp_path, capsys):
    argv = ["train", "--preset", "gpt2", "--data", pristine, "--out", tmp_path / "run", "--n-layer", "1",
            "--n-head", "2", "--n-embd", "32", "--block-size", "32", "--batch-size", "2", "--dtype", "float32",
            "--no-compile", "--max-steps", "0", "--no-progress", "--no-tensorboard", "--samples", "0"]
    assert main([str(a) for a in argv]) == 0
    out = capsys.readouterr().out
    assert "note: 8,192 micro-steps per optimizer step" in out and "set --total-batch-tokens 64" in out
