"""``gpt2kit eval`` under torchrun: two gloo processes on CPU give the single-process figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gpt2kit.cli import main

pytestmark = pytest.mark.slow  # whole runs, subprocesses or torchrun: the slow tier

TEXT = ("It is a truth universally acknowledged, that a single man in possession of a good fortune, "
        "must be in want of a wife. ")


def _data(tmp_path, task, write_hellaswag, write_prepared_dir):
    if task == "hellaswag":
        return write_hellaswag(tmp_path / "hs.jsonl"), ["--limit", "5", "--batch-size", "2"]  # 3 + 2 examples
    if task == "lambada":
        p = tmp_path / "lambada.jsonl"
        p.write_text("".join(json.dumps({"text": f"{TEXT[: 20 + 7 * i]} word{i}"}) + "\n" for i in range(5)))
        return p, ["--batch-size", "2"]
    if task == "loss-text":
        p = tmp_path / "docs.jsonl"
        p.write_text("".join(json.dumps({"text": TEXT * (i + 1)}) + "\n" for i in range(3)))
        return p, ["--stride", "24", "--batch-size", "3"]
    from gpt2kit.tokenizer import get_tokenizer

    val = np.array(get_tokenizer().encode(TEXT * 12), dtype=np.int64)
    return write_prepared_dir(tmp_path / "prepared", val), ["--batch-size", "2", "--limit", "4"]


@pytest.mark.parametrize("task", ["hellaswag", "lambada", "loss-text", "loss-prepared"])
def test_two_ranks_match_one(tmp_path, capsys, hf_model_dir, write_hellaswag, write_prepared_dir, task):
    data, extra = _data(tmp_path, task, write_hellaswag, write_prepared_dir)
    cmd = task.split("-")[0]
    args = ["eval", cmd, "--checkpoint", str(hf_model_dir), "--data", str(data), "--device", "cpu", *extra]
    assert main(args + ["--json", "--out", str(tmp_path / "one.json")]) == 0
    one = json.loads(capsys.readouterr().out)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "gpt2kit",
         *args, "--json", "--out", str(tmp_path / "two.json")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    two = json.loads(proc.stdout)  # only rank 0 prints
    assert two["settings"]["world_size"] == 2
    for key in ("acc", "acc_norm", "acc_norm_bytes", "n", "tokens", "bytes"):
        assert two.get(key) == one.get(key), key
    for key in ("loss", "perplexity", "bits_per_byte"):
        if key in one:
            assert two[key] == pytest.approx(one[key], rel=1e-6), key


DDP_SCRIPT = '''
import gc, json, sys
import torch, torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from gpt2kit.checkpoint import load_model
from gpt2kit.eval.hellaswag import load_examples, score_hellaswag
from gpt2kit.eval.loss import all_reduce_loss, mean_loss

dist.init_process_group("gloo")
rank, ws = dist.get_rank(), dist.get_world_size()
model = DDP(load_model(sys.argv[1]).model)  # as the trainer passes it
examples = load_examples(sys.argv[2], limit=5)  # 3 examples on rank 0, 2 on rank 1
hs = score_hellaswag(model, examples, device="cpu", batch_size=2, rank=rank, world_size=ws)
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 50257, (6, 16), generator=g)
y = torch.randint(0, 50257, (6, 16), generator=g)
mine = [(x[i : i + 1], y[i : i + 1]) for i in range(rank, 6, ws)]
loss = all_reduce_loss(mean_loss(model, mine, device="cpu"))
if rank == 0:
    print(json.dumps({"hellaswag": hs, "loss": loss}))
del model  # as gpt2kit.distributed.teardown: a DDP wrapper freed only at exit can abort the process
gc.collect()
dist.destroy_process_group()
'''


def test_ddp_wrapped_model_as_the_trainer_calls_it(tmp_path, hf_model_dir, gk_model, write_hellaswag):
    """score_hellaswag / mean_loss + all_reduce_loss on a DDP-wrapped model, uneven shards: global figures."""
    import torch

    from gpt2kit.eval.hellaswag import load_examples, score_hellaswag
    from gpt2kit.eval.loss import mean_loss

    data = write_hellaswag(tmp_path / "hs.jsonl")
    script = tmp_path / "ddp_eval.py"
    script.write_text(DDP_SCRIPT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
         str(hf_model_dir), str(data)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["hellaswag"] == score_hellaswag(gk_model, load_examples(data, limit=5), device="cpu")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (6, 16), generator=g)
    y = torch.randint(0, 50257, (6, 16), generator=g)
    want = mean_loss(gk_model, [(x, y)], device="cpu")
    assert got["loss"]["tokens"] == want["tokens"] == 96
    assert got["loss"]["loss"] == pytest.approx(want["loss"], rel=1e-6)
