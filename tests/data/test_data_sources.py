"""Sources: every file format, directories, globs, compression, Hugging Face streaming, built-in corpora."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma

import pytest

from gpt2kit.data.sources import ReadProgress, SourceOptions, iter_documents, resolve_sources
from gpt2kit.errors import UserError


def read_all(specs, **options):
    progress = ReadProgress()
    docs = list(iter_documents(resolve_sources([str(s) for s in specs], SourceOptions(**options)),
                               SourceOptions(**options), progress))
    assert progress.documents == len(docs)
    return docs


def test_every_local_format_in_a_directory_in_path_order(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    d = tmp_path / "corpus"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("plain text file\nsecond line")
    (d / "b.md").write_text("# markdown doc")
    lines = "".join(json.dumps({"text": t}) + "\n" for t in ["gz one", "gz two"])
    (d / "c.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (d / "d.json").write_text(json.dumps([{"text": "array one"}, {"text": "array two"}]))
    (d / "e.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(b'{"text": "zstd"}\n'))
    (d / "f.txt.xz").write_bytes(lzma.compress(b"xz text"))
    (d / "g.ndjson.bz2").write_bytes(bz2.compress(b'{"text": "bz2"}\n\n'))
    pq.write_table(pa.table({"text": ["parquet 0", "parquet 1"], "n": [0, 1]}), d / "sub" / "h.parquet")
    (d / "notes.csv").write_text("ignored,because,unknown")
    (d / ".hidden.txt").write_text("ignored because hidden")
    assert read_all([d]) == ["plain text file\nsecond line", "# markdown doc", "gz one", "gz two", "array one",
                             "array two", "zstd", "xz text", "bz2", "parquet 0", "parquet 1"]
    assert read_all([d / "**" / "*.parquet"]) == ["parquet 0", "parquet 1"]
    assert read_all([d / "a.txt", d / "c.jsonl.gz"]) == ["plain text file\nsecond line", "gz one", "gz two"]


def test_text_field_selects_json_field_and_parquet_column(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "x.jsonl").write_text(json.dumps({"text": "no", "content": "yes"}) + "\n")
    pq.write_table(pa.table({"content": ["col"]}), tmp_path / "y.parquet")
    assert read_all([tmp_path / "x.jsonl", tmp_path / "y.parquet"], text_field="content") == ["yes", "col"]
    with pytest.raises(UserError, match=r"y\.parquet: no 'text' column \(columns: content\).*--text-field"):
        read_all([tmp_path / "y.parquet"])


def test_empty_documents_are_skipped(tmp_path):
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["a", "", "b"]))
    assert read_all([tmp_path / "x.jsonl"]) == ["a", "b"]


def _write(name, data):
    def make(d):
        if data is not None:
            (d / name).write_bytes(data)
        return d / name
    return make


@pytest.mark.parametrize("make, pattern", [
    (_write("missing.txt", None), r"missing\.txt: no such file or directory"),
    (_write("data.txt", b"\xff\xfe bad"), r"data\.txt: not UTF-8"),
    (_write("trunc.jsonl.gz", gzip.compress(b'{"text": "a"}\n' * 50)[:-9]), r"trunc\.jsonl\.gz: cannot decompress"),
    (_write("arr.json", b"[1, 2"), r"arr\.json: not valid JSON"),
    (_write("bytes.jsonl", b'{"text": "a"}\n{"text": "\xff"}\n'), r"bytes\.jsonl:2: not UTF-8"),
])
def test_unreadable_inputs_name_the_file(tmp_path, make, pattern):
    with pytest.raises(UserError, match=pattern):
        read_all([make(tmp_path)])


def test_empty_directory_and_unmatched_glob_are_errors(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.csv").write_text("a,b")
    with pytest.raises(UserError, match="holds no .txt"):
        read_all([tmp_path / "d"])
    with pytest.raises(UserError, match="matches no"):
        read_all([tmp_path / "nothing*.jsonl"])
    with pytest.raises(UserError, match="no source"):
        resolve_sources([], SourceOptions())


def test_huggingface_json_and_parquet_streaming_from_local_files(tmp_path):
    """The hf: path is the real datasets.load_dataset(..., streaming=True) code, fed local files."""
    pytest.importorskip("datasets")
    import pyarrow as pa
    import pyarrow.parquet as pq

    jl = tmp_path / "train.jsonl"
    jl.write_text("".join(json.dumps({"content": f"row {i}", "x": i}) + "\n" for i in range(5)))
    assert read_all(["hf:json"], hf_data_files=[str(jl)], text_field="content") == [f"row {i}" for i in range(5)]
    with pytest.raises(UserError, match=r"hf:json \(train\) row 0: no 'text' field"):
        read_all(["hf:json"], hf_data_files=[str(jl)])
    pq.write_table(pa.table({"text": ["p0", "p1", "p2"]}), tmp_path / "part.parquet")
    assert read_all(["hf:parquet"], hf_data_files=[str(tmp_path / "part.parquet")]) == ["p0", "p1", "p2"]
    with pytest.raises(UserError, match=r"hf:json: cannot load the dataset"):
        read_all(["hf:json"], hf_data_files=[str(tmp_path / "absent.jsonl")])


def test_huggingface_source_end_to_end_through_prepare(tmp_path, h):
    pytest.importorskip("datasets")
    from gpt2kit.data.prepare import prepare

    texts = [f"streamed document {i} " * (i + 1) for i in range(12)]
    src = h.write_jsonl(tmp_path / "hf" / "train.jsonl", texts)
    # no val split: this test is about the source; how splits cut documents is tests/data/test_data_split.py's
    man = prepare(["hf:json"], tmp_path / "out", hf_data_files=[str(src)], shard_tokens=64, val_fraction=0.0,
                  workers=1, progress=False)
    assert man["tokens"] == sum(len(h.encode(t)) + 1 for t in texts)
    assert man["source"][0] == {"spec": "hf:json", "type": "hf", "name": "json", "config": None, "split": "train",
                                "data_files": [str(src)]}
    assert h.documents_of(h.split_stream(tmp_path / "out", "train")) == texts


def test_builtin_corpora_split_into_documents_and_are_checked():
    from gpt2kit.data import builtin

    sotu = list(builtin.builtin_documents("sotu"))
    assert len(sotu) == builtin.BUILTIN_CORPORA["sotu"].num_documents == 233
    assert sotu[0].startswith("Fellow-Citizens of the Senate and House of Representatives")
    moby = list(builtin.builtin_documents("moby-dick"))
    assert len(moby) == 135 and moby[0].startswith("CHAPTER 1. Loomings.") and moby[-1].startswith("CHAPTER 135.")
    assert "Call me Ishmael" in moby[0] and "CHAPTER 2." not in moby[0]
    with pytest.raises(UserError, match="builtin:sotu, builtin:moby-dick"):
        resolve_sources(["builtin:nope"], SourceOptions())


def test_builtin_corpus_with_wrong_checksum_is_refused(monkeypatch):
    from dataclasses import replace

    from gpt2kit.data import builtin

    bad = replace(builtin.BUILTIN_CORPORA["moby-dick"], sha256="0" * 64)
    monkeypatch.setitem(builtin.BUILTIN_CORPORA, "moby-dick", bad)
    with pytest.raises(UserError, match="moby-dick.*reinstall gpt2kit"):
        builtin.builtin_text("moby-dick")
