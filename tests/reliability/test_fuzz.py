"""Property-based tests (hypothesis): the tokenizer round-trips any text, and the shard/manifest readers
given random bytes or random JSON either raise UserError or return data that is exactly right.
"""

from __future__ import annotations

import copy
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from reliability_harness import write_corpus

from gpt2kit.data.loader import TokenLoader
from gpt2kit.data.manifest import read_manifest
from gpt2kit.data.prepare import prepare
from gpt2kit.data.shards import (
    HEADER_BYTES,
    SHARD_MAGIC,
    SHARD_VERSION,
    open_shard,
    read_header,
    verify_shard,
)
from gpt2kit.data.tokenize import encode_documents
from gpt2kit.errors import UserError
from gpt2kit.io import file_sha256
from gpt2kit.tokenizer import EOT_ID, EOT_TOKEN, get_tokenizer

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

# derandomized: the same examples on every run, so CI is reproducible; explicit @examples pin found bugs
FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])

# any unicode text, with the end-of-text marker, whitespace runs and long repeats mixed in
TEXT = st.lists(
    st.one_of(st.text(max_size=40), st.just(EOT_TOKEN), st.sampled_from([" ", "\n", "\t", "  \n\n", "\r\n"]),
              st.builds(lambda c, n: c * n, st.characters(), st.integers(1, 300))),
    max_size=12,
).map("".join)
# what JSON can hand the tokenizer: lone surrogates included ("\ud800" is valid JSON)
JSON_TEXT = st.text(alphabet=st.characters(blacklist_categories=()), max_size=60)


@FUZZ
@given(TEXT)
def test_tokenizer_round_trips_any_text(text):
    tok = get_tokenizer()
    ids = tok.encode(text)
    assert all(0 <= i < EOT_ID for i in ids), "ordinary text never produces <|endoftext|> or ids past the vocabulary"
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")


@FUZZ
@given(st.lists(TEXT, max_size=6))
def test_batch_and_prepare_tokenize_exactly_as_encode(texts):
    tok = get_tokenizer()
    assert tok.encode_batch(texts, num_threads=2) == [tok.encode(t) for t in texts]
    tokens, lengths = encode_documents(texts)
    expected = [i for t in texts for i in [EOT_ID, *tok.encode(t)]]
    assert tokens.tolist() == expected and lengths.tolist() == [len(tok.encode(t)) + 1 for t in texts]


@FUZZ
@given(st.lists(JSON_TEXT, min_size=1, max_size=6))
def test_prepare_tokenizes_any_json_string_like_encode(texts):
    """Lone surrogates are replaced as the tokenizer's encode does, never a crash."""
    tokens, _ = encode_documents(texts)
    tok = get_tokenizer()
    assert tokens.tolist() == [i for t in texts for i in [EOT_ID, *tok.encode(t)]]


# ---------------------------------------------------------------------------------------------- shard files


def _header(magic: int, version: int, count: int, rest: list[int]) -> bytes:
    h = np.zeros(256, dtype="<i4")
    h[0], h[1], h[2] = magic, version, count
    h[3:3 + len(rest)] = rest
    return h.tobytes()


SHARD_BYTES = st.one_of(
    st.binary(max_size=3000),  # anything at all
    st.builds(  # a plausible header over a payload of any length
        lambda count, rest, payload: _header(SHARD_MAGIC, SHARD_VERSION, count, rest) + payload,
        st.one_of(st.integers(-(2**31), 2**31 - 1), st.integers(0, 1000)),
        st.lists(st.integers(-(2**31), 2**31 - 1), max_size=3).map(lambda r: r if any(r) else []),
        st.binary(max_size=2100),
    ),
    st.builds(  # a whole, valid shard, sometimes with a few bytes cut or added
        lambda toks, cut: (_header(SHARD_MAGIC, SHARD_VERSION, len(toks), []) + np.array(toks, "<u2").tobytes())[
            : None if cut == 0 else cut],
        st.lists(st.integers(0, 65535), max_size=500), st.integers(-3, 0),
    ),
    st.builds(lambda magic, version, n: _header(magic, version, n, []) + b"\0" * (2 * max(n, 0)),
              st.integers(-(2**31), 2**31 - 1), st.integers(-5, 5), st.integers(0, 50)),
)


@FUZZ
@given(SHARD_BYTES)
def test_shard_reader_on_random_bytes_raises_user_error_or_reads_exactly(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train_000000.bin"
        path.write_bytes(data)
        try:
            n = read_header(path)
        except UserError as e:
            assert str(path) in str(e)
            return
        assert len(data) == HEADER_BYTES + 2 * n and n >= 0
        tokens = open_shard(path, n)
        assert tokens.dtype == np.dtype("<u2") and tokens.shape == (n,)
        assert tokens.tobytes() == data[HEADER_BYTES:]
        if n and int(tokens.max()) >= 50257:
            with pytest.raises(UserError, match="outside the manifest.s vocabulary"):
                verify_shard(path, tokens=n, sha256=file_sha256(path))
        else:
            verify_shard(path, tokens=n, sha256=file_sha256(path))
        with pytest.raises(UserError):
            verify_shard(path, tokens=n + 1, sha256=None)
        del tokens


@FUZZ
@given(SHARD_BYTES, st.integers(1, 8), st.integers(1, 3))
def test_loader_over_a_random_shard_raises_user_error_or_gives_its_windows(data, block_size, batch):
    from gpt2kit.data.manifest import MANIFEST_KIND, MANIFEST_VERSION, tokenizer_record

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "train_000000.bin").write_bytes(data)
        try:
            n = read_header(d / "train_000000.bin")
        except UserError:
            n = len(data) // 2  # a manifest that believes the broken file
        entry = {"file": "train_000000.bin", "tokens": n, "bytes": len(data),
                 "sha256": file_sha256(d / "train_000000.bin")}
        man = {"kind": MANIFEST_KIND, "format_version": MANIFEST_VERSION, **tokenizer_record(),
               "splits": {"train": {"tokens": n, "shards": [entry]}}}
        (d / "manifest.json").write_text(json.dumps(man))
        try:
            loader = TokenLoader(d, block_size=block_size, micro_batch_size=batch, shuffle=False)
        except UserError:
            return
        stream = np.frombuffer(data[HEADER_BYTES:], dtype="<u2").astype(np.int64)
        for k in range(3):
            x, y = loader.next_batch()
            assert x.shape == y.shape == (batch, block_size)
            for row in range(batch):
                w = (k * batch + row) % loader.num_windows
                assert x[row].tolist() == stream[w * block_size:(w + 1) * block_size].tolist()
                assert y[row].tolist() == stream[w * block_size + 1:(w + 1) * block_size + 1].tolist()
        del loader


# ---------------------------------------------------------------------------------------------- manifests


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False),
              st.text(max_size=12),
              st.sampled_from(["", ".", "..", "/", "train_000000.bin\0", "x/../y", "val_000000.bin"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8,
)


FIELD_VALUES = {
    "file": st.one_of(st.sampled_from(["", ".", "..", "/", "a/b", "val_000000.bin", "train_000001.bin", "nope.bin",
                                       "train_000000.bin\0", "manifest.json", " "]), st.text(max_size=20)),
    "tokens": st.one_of(st.integers(-10, 10**12), JSON_VALUE),
    "sha256": st.one_of(st.text(max_size=64), st.just("0" * 64), JSON_VALUE),
    "bytes": st.one_of(st.integers(-10, 10**12), JSON_VALUE),
}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fuzz-data")
    corpus = write_corpus(root / "c.jsonl", num_docs=12, words_per_doc=40)
    prepare([corpus], root / "data", shard_tokens=200, val_fraction=0.3, workers=1, progress=False)
    return root / "data"


def _paths(man: dict) -> list[tuple]:
    """Every (key path) inside the manifest that a mutation may replace."""
    out = []

    def walk(x, path):
        out.append(path)
        if isinstance(x, dict):
            for k, v in x.items():
                walk(v, path + (k,))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, path + (i,))
    walk(man, ())
    return out


def _load_or_user_error(prepared: Path, man: dict, mutated) -> None:
    """Write ``mutated`` as the manifest of a copy of ``prepared``: UserError, or data verified against ``man``."""
    with tempfile.TemporaryDirectory() as d:
        d = Path(d) / "data"
        shutil.copytree(prepared, d)
        (d / "manifest.json").write_text(json.dumps(mutated))
        try:
            read_manifest(d)
            loader = TokenLoader(d, block_size=8, micro_batch_size=2, shuffle=False)
        except UserError:
            return
        # accepted: then every shard it reads is one of the prepared shards, unchanged
        x, _ = loader.next_batch()
        files = {e["file"]: e for e in man["splits"]["train"]["shards"]}
        assert all(e["file"] in files and e["sha256"] == files[e["file"]]["sha256"]
                   for e in mutated["splits"]["train"]["shards"])
        assert int(x.max()) < 65536
        del loader


@FUZZ
@given(field=st.sampled_from(["file", "tokens", "sha256", "bytes"]), data=st.data(), drop_bytes=st.booleans())
@example(field="file", data=None, drop_bytes=True).via("a directory: the data dir itself")
def test_any_value_in_a_shard_entry_raises_user_error_or_loads_verified_data(prepared, field, data, drop_bytes):
    man = json.loads((prepared / "manifest.json").read_text())
    for value in ["", ".", "..", "train_000000.bin\0"] if data is None else [data.draw(FIELD_VALUES[field])]:
        mutated = copy.deepcopy(man)
        entry = mutated["splits"]["train"]["shards"][0]
        entry[field] = value
        if drop_bytes:
            entry.pop("bytes", None)
        _load_or_user_error(prepared, man, mutated)


@FUZZ
@given(st.data())
def test_any_mutation_of_a_manifest_raises_user_error_or_loads_verified_data(prepared, data):
    man = json.loads((prepared / "manifest.json").read_text())
    mutated = copy.deepcopy(man)
    entry_fields = [("splits", "train", "shards", i, k) for i in range(len(man["splits"]["train"]["shards"]))
                    for k in ("file", "tokens", "sha256", "bytes")]
    for _ in range(data.draw(st.integers(1, 3))):
        # half the mutations hit a shard entry's fields, where a reader turns values into paths and sizes
        fields = [p for p in entry_fields if p in _paths(mutated)]
        path = data.draw(st.sampled_from(fields) if fields and data.draw(st.booleans())
                         else st.sampled_from(_paths(mutated)))
        value = data.draw(FIELD_VALUES[path[-1]] if path in entry_fields else JSON_VALUE)
        if not path:
            mutated = value
            continue
        target = mutated
        for key in path[:-1]:
            target = target[key]
        if data.draw(st.booleans()) and isinstance(target, dict):
            target.pop(path[-1])  # or drop it
        else:
            target[path[-1]] = value
    assume(mutated != man)
    _load_or_user_error(prepared, man, mutated)
