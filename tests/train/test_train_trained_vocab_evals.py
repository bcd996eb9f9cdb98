"""Training on a trained vocabulary: HellaSwag and --eval-task are scored in the data's tokenizer, and the progress
line shows the validation bits per byte beside the validation loss."""

from __future__ import annotations

import json

import pytest

from gpt2kit.train.loop import _postfix

PIQA_ROWS = [{"goal": f"To cross the sea {i},", "sol1": "take the ship.", "sol2": "swim to the café 👋🏽.",
              "label": i % 2} for i in range(4)]
HELLASWAG_ROWS = [{"ctx": "Call me Ishmael. Some years ago", "endings": ["I sail.", "never mind.", "naïve café.",
                                                                        "2 + 3 = 5."], "label": i % 4}
                  for i in range(4)]


def test_the_progress_line_shows_val_loss_and_bpb():
    line = _postfix(3.25, 1e-3, 0.5, 1000.0, None, 0, {"val_loss": 3.5, "val_bpb": 1.25})
    assert line.startswith("loss 3.2500 val 3.5000 bpb 1.2500 lr 1.00e-03")
    assert _postfix(3.25, 1e-3, 0.5, 1000.0, None, 0, {"val_loss": 3.5}).startswith("loss 3.2500 val 3.5000 lr")
    assert _postfix(3.25, 1e-3, 0.5, 1000.0, None).startswith("loss 3.2500 lr")  # before the first evaluation


@pytest.mark.slow  # a whole run
def test_hellaswag_and_eval_task_in_the_datas_tokenizer(tiny_cfg, data_dir, trained_tokenizer, tmp_path, capsys):
    from gpt2kit.data.prepare import prepare
    from gpt2kit.train.pretrain import run_pretraining

    data = tmp_path / "prepared"
    prepare([str(data_dir.parent / "docs.jsonl")], data, tokenizer=trained_tokenizer.path, val_fraction=0.1,
            workers=1, progress=False)
    hs, piqa = tmp_path / "hs.jsonl", tmp_path / "piqa.jsonl"
    hs.write_text("".join(json.dumps(r) + "\n" for r in HELLASWAG_ROWS))
    piqa.write_text("".join(json.dumps(r) + "\n" for r in PIQA_ROWS))
    # a GPT-2 id (>= 300) would crash this model's embedding: a run that scores both used the data's tokenizer
    result = run_pretraining(tiny_cfg(data=str(data), out=str(tmp_path / "run"), max_steps=2, eval_every=2,
                                      hellaswag=str(hs), hellaswag_every=0, eval_task="piqa",
                                      eval_task_data=str(piqa), progress=True))
    last = result.metrics[-1]
    assert last["hellaswag_acc_norm"] in (0.0, 0.25, 0.5, 0.75, 1.0) and last["piqa_acc"] in (0.0, 0.25, 0.5, 0.75, 1)
    assert last["val_bpb"] > 0
    bar = capsys.readouterr().err.strip().splitlines()[-1]  # the progress bar's final line
    assert f"val {last['val_loss']:.4f} bpb {last['val_bpb']:.4f}" in bar, bar
