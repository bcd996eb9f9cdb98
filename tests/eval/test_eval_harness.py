"""lm-evaluation-harness drives gpt2kit models (``--model gpt2kit``), on local task files since the hub is not
reachable in tests: its own arc_easy/mmlu/winogrande yaml files pointed at local rows (``dataset_path: json``)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

lm_eval = pytest.importorskip("lm_eval")

from test_eval_choice import ARC_ROWS, MMLU_ROWS, WINOGRANDE_ROWS, write_rows  # noqa: E402

from gpt2kit.cli import main  # noqa: E402
from gpt2kit.eval.choice import score_choices  # noqa: E402
from gpt2kit.eval.harness import GPT2KitLM, register  # noqa: E402
from gpt2kit.eval.tasks import choice_items, get_task, load_questions  # noqa: E402
from gpt2kit.generation import generate  # noqa: E402
from gpt2kit.tokenizer import EOT_ID, get_tokenizer  # noqa: E402

HARNESS_TASKS = Path(lm_eval.__file__).parent / "tasks"


def local_task(tmp_path, name: str, include: Path, rows, **fields) -> None:
    """A harness task yaml: ``include`` (the harness's own definition) on local rows as its test split."""
    data = write_rows(tmp_path / f"{name}.jsonl", rows)
    spec = {"include": str(include), "task": name, "dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test", "training_split": None,
            "validation_split": None, "fewshot_split": None, **fields}
    (tmp_path / f"{name}.yaml").write_text(json.dumps(spec))  # JSON is YAML


def harness_results(tmp_path, tasks, model="gpt2kit", model_args="", batch_size=3):
    from lm_eval.tasks import TaskManager

    register()
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=tasks, batch_size=batch_size,
                                  device="cpu", task_manager=TaskManager(include_path=str(tmp_path)),
                                  log_samples=False)
    return {t: {k.split(",")[0]: v for k, v in out["results"][t].items() if "," in k and "stderr" not in k}
            for t in tasks}


def gpt2kit_scores(model, task, rows, tmp_path):
    path = write_rows(tmp_path / f"gk-{task}.jsonl", rows)
    s = score_choices(model, choice_items(load_questions(get_task(task), path)), device="cpu")
    return {"acc": s["acc"], "acc_norm": s["acc_per_char"]}


@pytest.fixture
def harness_tasks(tmp_path):
    local_task(tmp_path, "gk_arc_easy", HARNESS_TASKS / "arc" / "arc_easy.yaml", ARC_ROWS)
    subject = [dict(r, subject="college_chemistry") for r in MMLU_ROWS]
    local_task(tmp_path, "gk_mmlu", HARNESS_TASKS / "mmlu" / "default" / "_default_template_yaml", subject,
               description="The following are multiple choice questions (with answers) about college chemistry.\n\n",
               fewshot_config=None)
    return {"gk_arc_easy": ("arc-easy", ARC_ROWS), "gk_mmlu": ("mmlu", subject)}


@pytest.mark.slow  # the harness's whole pipeline, twice
def test_harness_with_gpt2kit_model_matches_gpt2kit_figures(tmp_path, hf_model_dir, gk_model, harness_tasks):
    got = harness_results(tmp_path, list(harness_tasks), model_args=f"checkpoint={hf_model_dir}")
    for name, (task, rows) in harness_tasks.items():
        want = gpt2kit_scores(gk_model, task, rows, tmp_path)
        assert {k: got[name][k] for k in got[name]} == {k: want[k] for k in got[name]}, name


@pytest.mark.slow  # the harness's whole pipeline
def test_winogrande_partial_evaluation_matches(tmp_path, hf_model_dir, gk_model):
    include = HARNESS_TASKS / "winogrande" / "default.yaml"
    (tmp_path / "preprocess_winogrande.py").write_text((include.parent / "preprocess_winogrande.py").read_text())
    local_task(tmp_path, "gk_winogrande", include, WINOGRANDE_ROWS)
    got = harness_results(tmp_path, ["gk_winogrande"], model_args=f"checkpoint={hf_model_dir}")
    assert got["gk_winogrande"]["acc"] == gpt2kit_scores(gk_model, "winogrande", WINOGRANDE_ROWS, tmp_path)["acc"]


@pytest.mark.slow  # the harness's hf model on the same weights
def test_gpt2kit_model_agrees_with_the_harness_hf_model(tmp_path, hf_model_dir, harness_tasks):
    from gpt2kit.tokenizer import hf_tokenizer_files

    for name, text in hf_tokenizer_files().items():
        (tmp_path / "tok").mkdir(exist_ok=True)
        (tmp_path / "tok" / name).write_text(text)
    ours = harness_results(tmp_path, list(harness_tasks), model_args=f"checkpoint={hf_model_dir}")
    theirs = harness_results(tmp_path, list(harness_tasks), model="hf",
                             model_args=f"pretrained={hf_model_dir},tokenizer={tmp_path / 'tok'},dtype=float32")
    assert ours == theirs


def requests(*args):
    return [SimpleNamespace(args=a) for a in args]


def test_loglikelihood_rolling_and_generation(hf_model_dir, gk_model):
    lm = GPT2KitLM(str(hf_model_dir), device="cpu", batch_size=2)
    tok = get_tokenizer()
    text = "The quick brown fox jumps over the lazy dog. " * 12  # > 64 tokens: several windows
    ids = tok.encode(text)
    want = 0.0
    with torch.no_grad():  # windows of up to 64 predictions, each reading the (up to) 64 tokens before its end
        seq = [EOT_ID] + ids  # seq[j] is the input that predicts ids[j]
        for start in range(0, len(ids), 64):
            end = min(start + 64, len(ids))
            inp = torch.tensor([seq[max(0, end - 64):end]])
            logp = torch.log_softmax(gk_model(inp)[0].double(), dim=-1)[0, -(end - start):]
            want += float(logp.gather(1, torch.tensor(ids[start:end])[:, None]).sum())
    short = "Hello there."
    with torch.no_grad():
        s_ids = tok.encode(short)
        logp = torch.log_softmax(gk_model(torch.tensor([[EOT_ID] + s_ids[:-1]]))[0].double(), dim=-1)[0]
        want_short = float(logp.gather(1, torch.tensor(s_ids)[:, None]).sum())
    got = lm.loglikelihood_rolling(requests((text,), (short,)), disable_tqdm=True)
    assert got == pytest.approx([want, want_short], rel=1e-6)  # float32 logits

    prompts = ["Once upon a time", "The answer is"]
    outs = lm.generate_until(requests(*((p, {"until": ["\n"], "max_gen_toks": 6}) for p in prompts)),
                             disable_tqdm=True)
    for p, out in zip(prompts, outs):
        full = generate(gk_model, torch.tensor([tok.encode(p)]), 6, temperature=0.0, eos_id=EOT_ID)
        text = tok.decode([t for t in full[0, len(tok.encode(p)):].tolist() if t != EOT_ID])
        assert out == text.split("\n")[0]
    stop = outs[0][1:3] if len(outs[0]) > 3 else None
    if stop:  # a stop string cuts the continuation where it first appears
        cut = lm.generate_until(requests((prompts[0], {"until": [stop], "max_gen_toks": 6})), disable_tqdm=True)
        assert cut == [outs[0].split(stop)[0]]

    ll = lm.loglikelihood(requests(("Question: x\nAnswer:", " yes"), ("", "Hello")), disable_tqdm=True)
    assert len(ll) == 2 and all(isinstance(v, float) and isinstance(g, bool) for v, g in ll)


@pytest.mark.slow  # imports datasets / runs the harness's whole command line
def test_gpt2kit_lm_eval_command_runs_the_harness(tmp_path, capsys, hf_model_dir):
    local_task(tmp_path, "gk_arc_easy", HARNESS_TASKS / "arc" / "arc_easy.yaml", ARC_ROWS[:2])
    argv = ["lm-eval", "--model", "gpt2kit", "--model_args", f"checkpoint={hf_model_dir}", "--device", "cpu",
            "--tasks", "gk_arc_easy", "--include_path", str(tmp_path), "--output_path", str(tmp_path / "out")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "gk_arc_easy" in out and "acc_norm" in out
