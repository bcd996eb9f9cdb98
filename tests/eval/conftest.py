"""Fixtures for the evaluation tests: one tiny random GPT-2 saved as a Hugging Face directory."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def hf_model_dir(tmp_path_factory):
    """A random transformers GPT-2 (2 layers, 32 dims, 64 positions) saved with ``save_pretrained``.

    The token embedding is scaled up so the random model's predictions are sharp rather than nearly
    uniform: scores then differ clearly between endings, which makes the comparisons meaningful.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=64)).eval()
    with torch.no_grad():
        model.transformer.wte.weight.mul_(20.0)
    d = tmp_path_factory.mktemp("hf_tiny")
    model.save_pretrained(d)
    return d


@pytest.fixture(scope="session")
def hf_model(hf_model_dir):
    """The same weights as a transformers model, for independent reference computations."""
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(hf_model_dir).eval()


@pytest.fixture(scope="session")
def gk_model(hf_model_dir):
    """The same weights loaded through gpt2kit's one checkpoint loader."""
    from gpt2kit.checkpoint import load_model

    return load_model(str(hf_model_dir)).model


HELLASWAG_ROWS = [
    {"ctx": "A man is sitting on a roof. He", "endings": [
        "starts pulling up roofing on a roof.", "is ripping level tiles off.",
        "is holding a rubik's cube.", "starts pulling up roofing on a roof and throws the tiles down below him."]},
    {"ctx": "A woman is outside with a bucket and a dog. The dog", "endings": [
        "runs.", "is running around trying to avoid a bath with all of its might.",
        "gets into the bath tub.", "gets the dog wet, then it runs away again."]},
    {"ctx": "Two girls are sailing on a lake. They", "endings": [
        "pull the sail.", "are sailing across the lake, laughing and waving at the people on the shore.",
        "jump.", "swim to the dock after the boat tips over in the strong wind."]},
    {"ctx": "The cook mixes flour and eggs in a bowl. Then she", "endings": [
        "bakes it.", "pours the batter into a pan and puts it in the oven for half an hour.",
        "sings.", "adds some milk, stirs the batter slowly and tastes it with a spoon."]},
    {"ctx": "A child is learning to ride a bicycle in the park. The father", "endings": [
        "lets go.", "holds the seat and runs beside the bike until the child keeps balance.",
        "waves.", "claps when the child finally rides to the end of the path alone."]},
    {"ctx": "Héloïse plays the piano — très bien! She", "endings": [
        "bows.", "plays a long piece by Chopin with great feeling and the audience cheers.",
        "stops.", "looks at the café's crowd, smiles and starts another étude."]},
]


def _write_hellaswag(path, rows=None, labels=None):
    rows = HELLASWAG_ROWS if rows is None else rows
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            label = labels[i] if labels is not None else i % len(r["endings"])
            obj = {"ind": i, "activity_label": "Test", "ctx_a": r["ctx"], "ctx_b": "", "ctx": r["ctx"],
                   "endings": r["endings"], "source_id": f"test~{i}", "split": "val", "split_type": "indomain",
                   "label": label}
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


@pytest.fixture(scope="session")
def write_hellaswag():
    """``write(path, rows=None, labels=None)``: official HellaSwag jsonl (labels default 0, 1, 2, 3, 0, ...)."""
    return _write_hellaswag


def _write_prepared_dir(path, val_tokens):
    from gpt2kit.data.manifest import MANIFEST_KIND, MANIFEST_VERSION, tokenizer_record, write_manifest
    from gpt2kit.data.shards import write_shard

    path.mkdir(parents=True)
    splits = {}
    for split, toks in (("train", np.arange(1000, 1300)), ("val", val_tokens)):
        name = f"{split}_000000.bin"
        sha = write_shard(path / name, toks)
        splits[split] = {"tokens": len(toks), "shards": [{"file": name, "tokens": len(toks), "sha256": sha}]}
    write_manifest(path / "manifest.json", {"kind": MANIFEST_KIND, "format_version": MANIFEST_VERSION,
                                            **tokenizer_record(), "splits": splits})
    return path


@pytest.fixture(scope="session")
def write_prepared_dir():
    """``write(path, val_tokens)``: a prepared data directory (shards + manifest.json), as prepare writes it."""
    return _write_prepared_dir
