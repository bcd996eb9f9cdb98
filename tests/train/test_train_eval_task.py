"""--eval-task: a harness multiple-choice task scored during training with HellaSwag's cadence."""

from __future__ import annotations

import json

import pytest

from gpt2kit.errors import UserError

ARC_ROWS = [{"id": f"q{i}", "question": f"The whale swam {i} miles. What did it do next?", "answerKey": "AB"[i % 2],
             "choices": {"text": ["dove deep", "sang a long song"], "label": ["A", "B"]}} for i in range(6)]


@pytest.mark.slow  # a whole run
def test_eval_task_is_scored_with_hellaswags_cadence(tiny_cfg, tmp_path):
    from gpt2kit.train.pretrain import run_pretraining

    rows = tmp_path / "arc.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ARC_ROWS))
    res = run_pretraining(tiny_cfg(max_steps=4, eval_every=2, hellaswag_every=4, eval_task="arc-easy",
                                   eval_task_data=str(rows), eval_task_limit=4))
    by_step = {r["step"]: r for r in res.metrics}
    assert "val_loss" in by_step[2] and "arc_easy_acc" not in by_step[2]
    assert by_step[4]["arc_easy_acc"] in (0.0, 0.25, 0.5, 0.75, 1.0) and "arc_easy_acc_norm" in by_step[4]
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["eval_task"] == "arc-easy" and saved["eval_task_limit"] == 4


@pytest.mark.parametrize("overrides, message", [
    ({"eval_task": "arc-esay", "eval_task_data": "x.jsonl"}, "--eval-task: unknown task 'arc-esay'; did you mean"),
    ({"eval_task": "mmlu"}, "--eval-task mmlu needs --eval-task-data FILE"),
    ({"eval_task": "mmlu", "eval_task_data": "x", "eval_task_limit": 0}, "--eval-task-limit must be >= 1"),
])
def test_eval_task_settings_are_checked(overrides, message):
    from gpt2kit.train.presets import get_preset
    from gpt2kit.train.resolve import apply_overrides

    with pytest.raises(UserError, match=message):
        apply_overrides(get_preset("demo-cpu"), overrides)
