"""Training speed: tokens/s and MFU of gpt2kit's training step, beside transformers' GPT2LMHeadModel.

Both models take the same step on the same random batch: autocast forward (when --dtype bfloat16), loss,
backward, global grad-norm clip at 1.0, AdamW (weight decay on 2-D parameters), zero_grad. gpt2kit runs
what ``gpt2kit train`` runs: its padded vocabulary (--padded-vocab-size, 50304, as the presets) and, when not
compiled, the fused output-layer loss (gpt2kit.train.fused_head_loss); gpt2kit-plain is the model's own forward loss.
transformers has the plain 50257 vocabulary and is run two ways: its own ``labels=`` loss (how its Trainer
trains) and transformers-ce (logits, then one cross-entropy on pre-shifted targets). Rounds alternate
between the models so that load from other processes hits both alike; the best round of each is reported.
With --batch-search the largest micro-batch that fits is found first (each try that runs out of memory
is freed and the next smaller one tried); transformers then runs at the same micro-batch, or at half or a
quarter of it when that does not fit. --json writes every figure to a file.
MFU uses 6N + 12·L·H·Q·T FLOPs per token against a table peak on NVIDIA GPUs or the matmul peak measured on
CPU (best of the rounds, printed), and the share of the CPUs other processes used meanwhile is printed.

The last line runs gpt2kit's real training loop (``gpt2kit.train.loop.train``) for the same config and
reports what its metrics logged, so loop overhead is visible.

    python benchmarks/train.py                                   # L=4 H=4 C=256 T=256 B=8, float32, CPU
    python benchmarks/train.py --dtype bfloat16
    python benchmarks/train.py --preset gpt2 --batch-size 16 --no-hf   # on a GPU
    python benchmarks/train.py --preset gpt2 --dtype bfloat16 --compile --batch-search 64,32,16 --device cuda
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")  # huge pages for large CPU tensors (as gpt2kit train does)

import torch  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def make_step(model, call, device, dtype, lr=6e-4, fused=None):
    """One training step closure: forward (autocast), backward, clip, AdamW step, zero_grad."""
    from gpt2kit.device import default_fused_adamw
    from gpt2kit.train.optim import decay_param_groups

    groups = decay_param_groups(model, 0.1)
    kw = {"fused": True} if (fused if fused is not None else default_fused_adamw(device)) else {}
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, **kw)
    params = [p for p in model.parameters() if p.requires_grad]
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if dtype == "bfloat16" else None

    def step(x, y):
        if ctx is not None:
            with ctx():
                loss = call(model, x, y)
        else:
            loss = call(model, x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def time_steps(step, x, y, device, n):
    """Seconds per step over ``n`` steps."""
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step(x, y)
    _sync(device)
    return (time.perf_counter() - t0) / n


def other_load(start=None):
    """CPU-seconds per second used by other processes since ``start`` (Linux /proc/stat); None elsewhere."""
    try:
        with open("/proc/stat") as f:
            v = [int(t) for t in f.readline().split()[1:]]
    except OSError:
        return None
    hz = os.sysconf("SC_CLK_TCK")
    now = (sum(v) - v[3] - v[4], time.perf_counter(), time.process_time())  # busy jiffies, wall, own CPU
    if start is None:
        return now
    busy = (now[0] - start[0]) / hz - (now[2] - start[2])
    return max(0.0, busy / (now[1] - start[1]))


def matmul_params(model, wpe) -> int:
    """Parameters that do matmuls: all but the position embeddings (tied weights counted once)."""
    return sum(p.numel() for p in model.parameters()) - wpe.numel()


def run_loop(args, device) -> dict:
    """gpt2kit's real training loop on random batches; returns its last metrics record."""
    from gpt2kit.distributed import DistEnv
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.train.config import LoopConfig
    from gpt2kit.train.loop import TrainTask, train
    from gpt2kit.train.metrics import gpt_flops_per_token

    class RandomBatches:
        def __init__(self):
            self.g = torch.Generator().manual_seed(0)

        def next_batch(self):
            x = torch.randint(0, 50257, (args.batch_size, args.block_size + 1), generator=self.g)
            return x[:, :-1], x[:, 1:]

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=args.n_layer, n_head=args.n_head, n_embd=args.n_embd, block_size=args.block_size,
                          padded_vocab_size=args.padded_vocab_size))
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        cfg = LoopConfig.from_dict(dict(out=out, dtype=args.dtype, compile=args.compile, batch_size=args.batch_size,
                                        max_steps=steps, schedule_steps=steps, warmup_steps=1, log_every=args.steps,
                                        eval_every=0, save_every=10**9, progress=False, tensorboard=False))
        from gpt2kit.train.fused_head_loss import FusedLossGPT

        task = TrainTask(model=model, model_config=model.config.to_dict(), train_data=RandomBatches(),
                         flops_per_token=gpt_flops_per_token(model),
                         train_module=None if args.compile else FusedLossGPT)
        res = train(cfg, task, DistEnv(device=device), log=lambda msg: None)
    return res.metrics[-1]


def find_batch_size(candidates: list[int], attempt: Callable[[int], Any],
                    cleanup: Callable[[], None] | None = None) -> tuple[int | None, Any, dict[str, str]]:
    """The first of ``candidates`` (largest first) whose ``attempt(B)`` runs without running out of memory:
    (B or None, what the attempt returned, {B: "ok" or "out of memory"}); ``cleanup`` runs after each failure."""
    tried: dict[str, str] = {}
    for B in candidates:
        try:
            result = attempt(B)
        except torch.OutOfMemoryError:
            tried[str(B)] = "out of memory"
        else:
            tried[str(B)] = "ok"
            return B, result, tried
        # here, past the except block: its traceback no longer holds the failed attempt's tensors
        (cleanup or free_memory)()
    return None, None, tried


def free_memory() -> None:
    """Give back what a failed attempt held (the caching allocator keeps freed blocks otherwise)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_compiled() -> None:
    """Forget compiled code too: the next micro-batch then compiles for its own static shape, not a dynamic one."""
    torch._dynamo.reset()
    free_memory()


def random_batch(B: int, T: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) (B, T) each: one fixed random batch, the same for every model."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 50257, (B, T + 1), generator=g)
    return tokens[:, :-1].to(device), tokens[:, 1:].to(device)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default=None, help="take the model shape from a training preset (e.g. gpt2)")
    ap.add_argument("--n-layer", type=int, default=4)
    ap.add_argument("--n-head", type=int, default=4)
    ap.add_argument("--n-embd", type=int, default=256)
    ap.add_argument("--block-size", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8, help="micro-batch B")
    ap.add_argument("--batch-search", default=None, metavar="B1,B2,...",
                    help="try these micro-batches, largest first, and use the first that does not run out of memory")
    ap.add_argument("--padded-vocab-size", type=int, default=50304)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                    help="autocast compute precision, as train's --dtype (weights stay float32)")
    ap.add_argument("--compile", action="store_true", help="torch.compile gpt2kit's model")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds; the best of each model counts")
    ap.add_argument("--no-hf", action="store_true", help="skip transformers")
    ap.add_argument("--no-loop", action="store_true", help="skip the run of the real training loop")
    ap.add_argument("--no-plain", action="store_true",
                    help="skip gpt2kit-plain (the model's own forward loss instead of the fused training loss)")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every figure to this JSON file")
    args = ap.parse_args()

    from gpt2kit.distributed import resolve_device
    from gpt2kit.model import GPT, GPTConfig
    from gpt2kit.train.metrics import flops_per_token, peak_flops

    if args.preset:
        from gpt2kit.train.presets import get_preset

        p = get_preset(args.preset).model
        args.n_layer, args.n_head, args.n_embd, args.block_size = p.n_layer, p.n_head, p.n_embd, p.block_size
        args.padded_vocab_size = p.padded_vocab_size
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    L, H, C, T = args.n_layer, args.n_head, args.n_embd, args.block_size
    peak, source = peak_flops(device, torch.bfloat16 if args.dtype == "bfloat16" else torch.float32)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    report: dict[str, Any] = {"device": device_name, "n_layer": L, "n_head": H, "n_embd": C, "block_size": T,
                              "dtype": args.dtype, "compile": args.compile, "torch": str(torch.__version__)}

    def build_ours(B: int) -> dict[str, tuple]:
        """gpt2kit's step(s) at micro-batch B, warmed up (compiled when --compile)."""
        torch.manual_seed(0)
        x, y = random_batch(B, T, device)
        ours = GPT(GPTConfig(n_layer=L, n_head=H, n_embd=C, block_size=T, padded_vocab_size=args.padded_vocab_size))
        ours.to(device)
        n_ours = matmul_params(ours, ours.transformer.wpe.weight) - (args.padded_vocab_size - 50257) * C
        if args.compile:
            built = {"gpt2kit": (make_step(torch.compile(ours), lambda m, a, b: m(a, b)[1], device, args.dtype),
                                 n_ours, x, y)}
        else:
            from gpt2kit.train.fused_head_loss import FusedLossGPT

            # what gpt2kit train runs by default (fused output layer + loss), and the model's own forward loss
            built = {"gpt2kit": (make_step(FusedLossGPT(ours), lambda m, a, b: m(a, b)[1], device, args.dtype),
                                 n_ours, x, y)}
            if not args.no_plain:
                torch.manual_seed(0)
                plain = GPT(ours.config).to(device)
                built["gpt2kit-plain"] = (make_step(plain, lambda m, a, b: m(a, b)[1], device, args.dtype),
                                          n_ours, x, y)
        for step, _, bx, by in built.values():
            for _ in range(args.warmup):
                step(bx, by)
        _sync(device)
        return built

    if args.batch_search:
        candidates = sorted({int(b) for b in args.batch_search.split(",")}, reverse=True)
        B, models, tried = find_batch_size(candidates, build_ours, reset_compiled if args.compile else None)
        report["batch_search"] = tried
        print(f"micro-batch search: {', '.join(f'B={b} {r}' for b, r in tried.items())}")
        if B is None:
            print(f"error: gpt2kit ran out of memory at every micro-batch in {candidates}; try smaller ones",
                  file=sys.stderr)
            _write_json(args.json, report)
            return 1
        args.batch_size = B
    else:
        B = args.batch_size
        models = build_ours(B)
    report["batch_size"] = B
    print(f"device {device} ({torch.get_num_threads()} threads) | L={L} H={H} C={C} T={T} B={B} | {args.dtype}"
          f" | compile {'on' if args.compile else 'off'} | peak: {source}")
    use_hf = not args.no_hf
    if use_hf:
        import torch.nn.functional as F
        from transformers import GPT2Config, GPT2LMHeadModel

        def hf_model():
            torch.manual_seed(0)
            m = GPT2LMHeadModel(GPT2Config(n_layer=L, n_head=H, n_embd=C, n_positions=T, resid_pdrop=0.0,
                                           embd_pdrop=0.0, attn_pdrop=0.0)).to(device)
            return m.train()

        def hf_manual(m, a, b):
            logits = m(input_ids=a).logits  # (B, T, V)
            return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), b.reshape(-1))

        def build_hf(hb: int) -> dict[str, tuple]:
            hx, hy = random_batch(hb, T, device)
            # transformers' own training path: labels=inputs, shifted inside the model (its Trainer does this)
            hf = hf_model()
            built = {"transformers": (make_step(hf, lambda m, a, b: m(input_ids=a, labels=a).loss, device,
                                                args.dtype), matmul_params(hf, hf.transformer.wpe.weight), hx, hy)}
            # and a kinder variant: logits, then one cross-entropy on our pre-shifted targets
            hf2 = hf_model()
            built["transformers-ce"] = (make_step(hf2, hf_manual, device, args.dtype),
                                        matmul_params(hf2, hf2.transformer.wpe.weight), hx, hy)
            for step, _, bx, by in built.values():
                for _ in range(args.warmup):
                    step(bx, by)
            _sync(device)
            return built

        # transformers may need more memory than gpt2kit at the same batch: then it runs at the largest that fits
        hf_b, hf_models, hf_tried = find_batch_size([b for b in (B, B // 2, B // 4) if b >= 1], build_hf)
        report["transformers_batch_size"] = hf_b
        if hf_b is None:
            print(f"transformers ran out of memory at micro-batch {B}, {B // 2} and {B // 4}; not compared")
            use_hf = False
        else:
            if hf_b != B:
                print(f"transformers runs at micro-batch {hf_b} ({B} ran out of memory); tokens/s still compare")
            models.update(hf_models)
    fpt = {name: flops_per_token(L, H, C // H, T, n) for name, (_, n, _, _) in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    from gpt2kit.train.metrics import measure_matmul_flops

    peak_dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
    peaks = [peak] if peak else []
    load0 = other_load()
    for _ in range(args.rounds):
        for name, (step, _, x, y) in models.items():
            times[name].append(time_steps(step, x, y, device, args.steps))
        if device.type == "cpu":  # the peak too is taken at the best moment, like the models' rates
            peaks.append(measure_matmul_flops.__wrapped__(peak_dtype, seconds=0.3))
    load = other_load(load0)
    if device.type == "cpu":
        peak = max(peaks)
        source = f"measured CPU {args.dtype} matmul peak {peak / 1e9:.1f} GFLOP/s (best of {len(peaks)})"
        if load is not None:
            print(f"other processes kept {load:.2f} of {os.cpu_count()} CPUs busy on average during the rounds "
                  "(timings under load are lower than on an idle machine)")
    report.update(peak_flops=peak, peak_source=source, other_load=load, models={})
    rate = {}
    for name, ts in times.items():
        n_tok = models[name][2].numel()
        rate[name] = n_tok / min(ts)
        mfu = fpt[name] * rate[name] / peak if peak else None
        median = n_tok / statistics.median(ts)
        report["models"][name] = {"tokens_per_s": rate[name], "median_tokens_per_s": median, "mfu": mfu,
                                  "flops_per_token": fpt[name], "batch_size": models[name][2].size(0)}
        print(f"{name:15s} {rate[name]:9.0f} tokens/s (best of {args.rounds}; median {median:.0f})"
              f"  {fpt[name] / 1e6:.1f} MFLOP/token" + (f"  MFU {mfu:.1%}" if mfu is not None else ""))
    if use_hf:
        report["ratio_vs_transformers"] = rate["gpt2kit"] / rate["transformers"]
        report["ratio_vs_transformers_ce"] = rate["gpt2kit"] / rate["transformers-ce"]
        print(f"ratio gpt2kit / transformers: {rate['gpt2kit'] / rate['transformers']:.2f}x tokens/s "
              f"({rate['gpt2kit'] / rate['transformers-ce']:.2f}x against transformers-ce)")
    if peak:
        report["mfu"] = fpt["gpt2kit"] * rate["gpt2kit"] / peak
        print(f"gpt2kit MFU: {report['mfu']:.1%} of {source}")
    _write_json(args.json, report)
    if not args.no_loop:
        del models
        free_memory()
        rec = run_loop(args, device)
        # against the same peak as the lines above (the loop's own MFU uses the peak it measured at its start)
        mfu = fpt["gpt2kit"] * rec["tokens_per_s"] / peak if peak else None
        report["loop"] = {"tokens_per_s": rec["tokens_per_s"], "mfu": mfu, "loss": rec.get("loss")}
        print(f"gpt2kit train loop: {rec['tokens_per_s']:.0f} tokens/s over {args.steps} logged steps"
              + (f", MFU {mfu:.1%}" if mfu is not None else "") + " (includes data, lr, clip, metrics)")
        _write_json(args.json, report)
    return 0


def _write_json(path: str | None, report: dict[str, Any]) -> None:
    if path:
        from gpt2kit.io import atomic_write_text

        atomic_write_text(path, json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
