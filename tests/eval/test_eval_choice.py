"""The harness's multiple-choice tasks: prompts exactly as lm-evaluation-harness writes them, figures equal to an
independent scorer written to the harness's definition, and one clear line for each kind of bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gpt2kit.cli import main
from gpt2kit.errors import UserError
from gpt2kit.eval.choice import score_choices
from gpt2kit.eval.tasks import TASKS, choice_items, get_task, load_questions
from gpt2kit.tokenizer import EOT_ID, get_tokenizer

ARC_ROWS = [
    {"id": "q1", "question": "Which gas do plants take in?", "answerKey": "B",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]}},
    {"id": "q2", "question": "What melts ice?", "answerKey": "1",
     "choices": {"text": ["heat", "cold", "dark"], "label": ["1", "2", "3"]}},
    {"id": "q3", "question": "Which is a mammal?", "answerKey": "D",
     "choices": {"text": ["trout", "frog", "eagle", "whale", "ant"], "label": ["A", "B", "C", "D", "E"]}},
    {"id": "q4", "question": "The sun is a", "answerKey": "A",
     "choices": {"text": ["star", "planet that orbits the moon every day", "moon"], "label": ["A", "B", "C"]}},
]
MMLU_ROWS = [
    {"question": "What is 2 + 2? ", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"],
     "answer": 1},
    {"question": "Who wrote Hamlet?", "subject": "world_literature",
     "choices": ["Shakespeare", "Dante", "Homer", "Poe"], "answer": 0},
    {"question": "H2O is", "subject": "college_chemistry", "choices": ["salt", "gold", "water", "air"], "answer": 2},
]
PIQA_ROWS = [
    {"goal": "To open a jar,", "sol1": "twist the lid.", "sol2": "freeze the lid and wait a year.", "label": 0},
    {"goal": "Dry wet shoes", "sol1": "in the sink.", "sol2": "with newspaper inside.", "label": 1},
    {"goal": "Cut bread", "sol1": "with a knife.", "sol2": "with a spoon.", "label": 0},
]
WINOGRANDE_ROWS = [
    {"sentence": "The trophy did not fit the suitcase because the _ was too big.", "option1": "trophy",
     "option2": "suitcase", "answer": "1"},
    {"sentence": "Sam gave Tom a gift because _ was kind.", "option1": "Sam", "option2": "Tom", "answer": "1"},
    {"sentence": "The cup fell off the table since _ was slippery.", "option1": "cup", "option2": "table",
     "answer": "2"},
]
ROWS = {"arc-easy": ARC_ROWS, "arc-challenge": ARC_ROWS, "mmlu": MMLU_ROWS, "piqa": PIQA_ROWS,
        "winogrande": WINOGRANDE_ROWS}


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --- the harness's definitions, written out independently of gpt2kit.eval.tasks --------------------------------

def harness_requests(task: str, row: dict, shots: list[dict] = ()) -> tuple[list[tuple[str, str]], list[str], int]:
    """(context, continuation) requests, the doc_to_choice strings and the gold index, per the task yaml files."""
    if task.startswith("arc"):
        choices = row["choices"]["text"]
        ctx = "Question: " + row["question"] + "\nAnswer:"
        return [(ctx, " " + c) for c in choices], choices, row["choices"]["label"].index(row["answerKey"])
    if task == "mmlu":
        def text(r):
            c = r["choices"]
            return f"{r['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"
        subject = row["subject"].replace("_", " ")
        ctx = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
        ctx += "".join(text(s) + " " + "ABCD"[s["answer"]] + "\n\n" for s in shots) + text(row)
        return [(ctx, " " + x) for x in "ABCD"], ["A", "B", "C", "D"], row["answer"]
    if task == "piqa":
        ctx = "Question: " + row["goal"] + "\nAnswer:"
        return [(ctx, " " + row["sol1"]), (ctx, " " + row["sol2"])], [row["sol1"], row["sol2"]], row["label"]
    assert task == "winogrande"
    i = row["sentence"].index("_")
    contexts = [row["sentence"][:i] + row["option1"], row["sentence"][:i] + row["option2"]]
    target = " " + row["sentence"][i + 1:].strip()
    return [(c, target) for c in contexts], contexts, {"1": 0, "2": 1}[row["answer"]]


def harness_loglikelihood(logits_fn, context: str, continuation: str, max_length: int = 64) -> float:
    """HFLM's loglikelihood: trailing spaces move to the continuation, encode whole then split, keep the last
    max_length + 1 tokens, sum the continuation's log-probabilities."""
    tok = get_tokenizer()
    n = len(context) - len(context.rstrip())
    if n:
        context, continuation = context[:-n], context[-n:] + continuation
    whole = tok.encode(context + continuation)
    ctx = tok.encode(context) if context else [EOT_ID]
    cont = whole[len(ctx):] if context else tok.encode(continuation)
    seq = (ctx + cont)[-(max_length + 1):]
    with torch.no_grad():
        logp = torch.log_softmax(logits_fn(torch.tensor([seq[:-1]])).double(), dim=-1)[0]  # (T, V)
    pos = torch.arange(len(seq) - 1 - len(cont), len(seq) - 1)
    return float(logp[pos, torch.tensor(cont)].sum())


def harness_figures(logits_fn, task: str, rows: list[dict]) -> dict:
    """acc (argmax of lls) and acc_norm (argmax of lls / len(choice)), as process_results computes them."""
    acc = acc_norm = 0
    for row in rows:
        reqs, choices, gold = harness_requests(task, row)
        lls = np.array([harness_loglikelihood(logits_fn, c, x) for c, x in reqs])
        acc += int(np.argmax(lls) == gold)
        acc_norm += int(np.argmax(lls / np.array([float(len(c)) for c in choices])) == gold)
    return {"acc": acc / len(rows), "acc_norm": acc_norm / len(rows)}


def gpt2kit_figures(model, task: str, path, batch_size: int = 8) -> dict:
    scores = score_choices(model, choice_items(load_questions(get_task(task), path)), device="cpu",
                           batch_size=batch_size)
    return {"acc": scores["acc"], "acc_norm": scores["acc_per_char"]}


# --- prompts ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", sorted(TASKS))
def test_prompts_are_the_harness_prompts(tmp_path, task):
    path = write_rows(tmp_path / "rows.jsonl", ROWS[task])
    for (where, q, prefix), row in zip(load_questions(get_task(task), path), ROWS[task]):
        reqs, choices, gold = harness_requests(task, row)
        assert [(prefix + c, x) for c, x in q.pairs()] == reqs, where
        assert list(q.choices) == choices and q.gold == gold


def test_prompt_text_spelled_out(tmp_path):
    q = get_task("arc-easy").question(ARC_ROWS[1])
    assert q.pairs() == [("Question: What melts ice?\nAnswer:", " heat"), ("Question: What melts ice?\nAnswer:",
                                                                            " cold"),
                         ("Question: What melts ice?\nAnswer:", " dark")] and q.gold == 0
    (where, q, prefix), *_ = load_questions(get_task("mmlu"), write_rows(tmp_path / "m.jsonl", MMLU_ROWS))
    assert prefix + q.contexts[0] == ("The following are multiple choice questions (with answers) about elementary "
                                      "mathematics.\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert q.continuations == (" A", " B", " C", " D") and q.gold == 1
    w = get_task("winogrande").question(WINOGRANDE_ROWS[2])
    assert w.pairs() == [("The cup fell off the table since cup", " was slippery."),
                         ("The cup fell off the table since table", " was slippery.")] and w.gold == 1


def test_mmlu_fewshot_takes_the_first_dev_rows_of_the_subject(tmp_path):
    dev = [dict(MMLU_ROWS[1], question=f"dev {i}?", answer=i % 4) for i in range(3)]
    dev.insert(1, dict(MMLU_ROWS[0], question="other subject"))
    test = write_rows(tmp_path / "test.jsonl", [MMLU_ROWS[1]])
    devf = write_rows(tmp_path / "dev.jsonl", dev)
    (_, q, prefix), = load_questions(get_task("mmlu"), test, num_fewshot=2, fewshot_path=devf)
    reqs, _, _ = harness_requests("mmlu", MMLU_ROWS[1], shots=[dev[0], dev[2]])
    assert prefix + q.contexts[0] == reqs[0][0]
    assert "Answer: A\n\ndev 1?" in prefix  # an answered shot: " " + letter + "\n\n"
    with pytest.raises(UserError, match="3 rows for 'world_literature', --num-fewshot 4"):
        load_questions(get_task("mmlu"), test, num_fewshot=4, fewshot_path=devf)
    with pytest.raises(UserError, match="at random"):
        load_questions(get_task("arc-easy"), test, num_fewshot=1, fewshot_path=devf)


# --- figures ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("task", sorted(TASKS))
def test_figures_match_an_independent_harness_scorer(tmp_path, gk_model, task):
    path = write_rows(tmp_path / "rows.jsonl", ROWS[task])
    want = harness_figures(lambda idx: gk_model(idx)[0], task, ROWS[task])
    for bs in (1, 3):
        assert gpt2kit_figures(gk_model, task, path, batch_size=bs) == want, bs


@pytest.mark.slow  # a transformers comparison
@pytest.mark.parametrize("task", ["arc-easy", "mmlu", "winogrande"])
def test_figures_match_the_harness_definition_on_transformers(tmp_path, gk_model, hf_model, task):
    path = write_rows(tmp_path / "rows.jsonl", ROWS[task])
    assert gpt2kit_figures(gk_model, task, path) == harness_figures(lambda idx: hf_model(idx).logits, task,
                                                                    ROWS[task])


def test_acc_norm_differs_from_acc_where_lengths_decide(tmp_path, gk_model):
    """Gold = the raw argmax: acc is 1; acc_norm falls exactly where dividing by characters picks another."""
    lls_rows, rows = [], []
    for row in ARC_ROWS:
        reqs, choices, _ = harness_requests("arc-easy", row)
        lls = np.array([harness_loglikelihood(lambda idx: gk_model(idx)[0], c, x) for c, x in reqs])
        lls_rows.append(np.argmax(lls) == np.argmax(lls / np.array([len(c) for c in choices])))
        rows.append(dict(row, answerKey=row["choices"]["label"][int(np.argmax(lls))]))
    got = gpt2kit_figures(gk_model, "arc-easy", write_rows(tmp_path / "r.jsonl", rows))
    assert got == {"acc": 1.0, "acc_norm": sum(lls_rows) / len(rows)}


# --- the command ------------------------------------------------------------------------------------------------

def test_cli_json_and_truncation_is_counted(tmp_path, capsys, hf_model_dir, gk_model):
    long = dict(ARC_ROWS[0], question="Which gas " + "really " * 80 + "do plants take in?")
    path = write_rows(tmp_path / "arc.jsonl", [long, *ARC_ROWS[1:]])
    assert main(["eval", "arc-easy", "--checkpoint", str(hf_model_dir), "--data", str(path), "--device", "cpu",
                 "--json", "--out", str(tmp_path / "r.json")]) == 0
    cap = capsys.readouterr()
    rec = json.loads(cap.out)
    assert rec["task"] == "arc-easy" and rec["n"] == 4 and rec["truncated"] == 1
    assert rec["settings"]["harness_task"] == "arc_easy"
    assert "warning: arc-easy: 1 of 4 questions were longer than the model's context (64 tokens)" in cap.err
    want = harness_figures(lambda idx: gk_model(idx)[0], "arc-easy", [long, *ARC_ROWS[1:]])
    assert {k: rec[k] for k in want} == want


def test_suite_prints_one_table_with_the_centred_mean(tmp_path, capsys, hf_model_dir, gk_model):
    files = {t: write_rows(tmp_path / f"{t}.jsonl", ROWS[t]) for t in ("arc-easy", "mmlu", "piqa")}
    argv = ["eval", "suite", "--tasks", "arc-easy,mmlu,piqa", "--checkpoint", str(hf_model_dir), "--device", "cpu",
            "--out", str(tmp_path / "s.json"), *[a for t, f in files.items() for a in ("--data", f"{t}={f}")]]
    assert main(argv) == 0
    out = capsys.readouterr().out
    rec = json.loads((tmp_path / "s.json").read_text())
    arc = harness_figures(lambda idx: gk_model(idx)[0], "arc-easy", ARC_ROWS)["acc_norm"]
    chance = np.mean([1 / len(r["choices"]["text"]) for r in ARC_ROWS])
    assert rec["tasks"]["arc-easy"]["centered"] == pytest.approx((arc - chance) / (1 - chance))
    assert rec["tasks"]["mmlu"]["metric"] == "acc" and rec["tasks"]["mmlu"]["chance"] == 0.25
    assert rec["score"] == pytest.approx(np.mean([r["centered"] for r in rec["tasks"].values()]))
    assert "score (mean centered)" in out and "arc-easy" in out and "piqa" in out


@pytest.mark.parametrize("task, row, message", [
    ("arc-easy", {"question": "q", "answerKey": "A"}, "missing 'choices'; arc-easy rows need question, choices"),
    ("arc-easy", {"question": "q", "answerKey": "A", "choices": {"text": [], "label": []}},
     "'choices.text' is empty: the question has no choices"),
    ("mmlu", {"question": "q", "subject": "s", "choices": [], "answer": 0},
     "'choices' is empty: the question has no choices"),
    ("mmlu", {"question": "q", "subject": "s", "choices": ["a", "b", "c", "d"], "answer": 4},
     "'answer' 4 is not one of the 4 choices"),
    ("piqa", {"goal": "g", "sol1": "a", "label": 0}, "missing 'sol2'"),
    ("winogrande", {"sentence": "no blank", "option1": "a", "option2": "b", "answer": "1"},
     "'sentence' has no '_' blank"),
    ("winogrande", ["not", "an", "object"], "expected an object, got list"),
])
def test_bad_rows_are_one_line_naming_file_and_line(tmp_path, capsys, hf_model_dir, task, row, message):
    path = write_rows(tmp_path / "bad.jsonl", [ROWS[task][0], row])
    assert main(["eval", task, "--checkpoint", str(hf_model_dir), "--data", str(path), "--device", "cpu"]) == 2
    cap = capsys.readouterr()
    lines = cap.err.strip().splitlines()
    assert cap.out == "" and lines[-1].startswith("gpt2kit eval: error:") and f"bad.jsonl:2: {message}" in lines[-1]


def test_unknown_task_says_did_you_mean(capsys, hf_model_dir, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["eval", "arc-esay", "--checkpoint", str(hf_model_dir)])
    assert e.value.code == 2
    assert "did you mean arc-easy?" in capsys.readouterr().err
    argv = ["eval", "suite", "--tasks", "arc-easy,mmmlu", "--checkpoint", str(hf_model_dir), "--device", "cpu"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "unknown task 'mmmlu'; did you mean mmlu?" in err


@pytest.mark.slow  # imports datasets / runs the harness's whole command line
def test_without_data_offline_asks_for_data(tmp_path, capsys, hf_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("GPT2KIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    assert main(["eval", "piqa", "--checkpoint", str(hf_model_dir), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "fetching baber/piqa" in err and "pass --data FILE" in err


def test_parquet_rows_read_like_jsonl(tmp_path, gk_model):
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(PIQA_ROWS), tmp_path / "piqa.parquet")
    a = gpt2kit_figures(gk_model, "piqa", tmp_path / "piqa.parquet")
    assert a == gpt2kit_figures(gk_model, "piqa", write_rows(tmp_path / "piqa.jsonl", PIQA_ROWS))
