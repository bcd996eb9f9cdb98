"""Generation speed: gpt2kit's KV-cache generate vs transformers' generate on the same weights, same run.

Prints tokens/s at batch 1 and 8 in fp32 and bf16, the ratio to transformers, and how close batch-1
decoding comes to the memory-bandwidth bound (every weight is read once per generated token). The
"unpacked" column is gpt2kit with ``packed=False`` (nn.Linear's own matrix-vector products), to show what
the packed CPU weights (gpt2kit.packed_decode.packed_cpu_linears) bring.

    python benchmarks/generate.py                       # gpt2 preset, random weights, current device
    python benchmarks/generate.py --preset tiny --new-tokens 16   # quick check
    python benchmarks/generate.py --device cuda --dtypes bfloat16 --batch-sizes 1,16 --json gen.json
    python benchmarks/generate.py --quantize int8 --baseline ctranslate2 --ct2-python /work/venvs/ct2/bin/python \
        --no-hf --dtypes float32 --batch-sizes 1,16

The unpacked column is measured on CPU only (the packed weights are a CPU path). --json writes every figure.
``--quantize int8`` adds rows for :func:`gpt2kit.quantize`'s int8 model (CPU). ``--baseline ctranslate2``
exports the same weights (benchmarks/ct2_worker.py converts them with CTranslate2's own converter) and times
CTranslate2 float32 and int8 in a process of its own, run by ``--ct2-python`` (an environment with ctranslate2
and transformers): two OpenMP runtimes in one process slow each other down.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from gpt2kit import GPT, GPTConfig
from gpt2kit.checkpoint import model_state_dict
from gpt2kit.generation import generate


def measure_bandwidth(device: torch.device, mb: int = 512) -> float:
    """Achieved copy bandwidth in GB/s (bytes read + written) for a large tensor copy."""
    n = mb * 1024 * 1024 // 4
    a = torch.empty(n, device=device)
    b = torch.empty(n, device=device)
    a.fill_(1.0)
    best = float("inf")
    for _ in range(5):
        _sync(device)
        t0 = time.perf_counter()
        b.copy_(a)
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * n * 4 / best / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_it(fn, device: torch.device, repeats: int) -> float:
    """Best wall time of ``repeats`` calls after one warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="gpt2", help="model preset (random weights)")
    ap.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    ap.add_argument("--prompt-tokens", type=int, default=16)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--json", default=None, metavar="PATH", help="also write every figure to this JSON file")
    ap.add_argument("--quantize", default=None, choices=("int8",), help="also time gpt2kit's int8 model (CPU)")
    ap.add_argument("--baseline", default=None, choices=("ctranslate2",),
                    help="also time CTranslate2 (float32 and int8) on the same weights, in its own process")
    ap.add_argument("--ct2-python", default="python", help="the Python that runs the CTranslate2 worker")
    args = ap.parse_args()

    device = torch.device(args.device)
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset(args.preset)
    base = GPT(cfg).eval()
    hf_base = None
    if not args.no_hf:
        import transformers

        from gpt2kit.checkpoint.hf import config_to_hf
        from gpt2kit.model.hf_keys import state_dict_to_hf

        hf_base = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_to_hf(cfg))).eval()
        hf_base.load_state_dict(state_dict_to_hf(model_state_dict(base), cfg), strict=False)
        hf_base.tie_weights()
    n_params = base.num_params()
    bw = measure_bandwidth(device)
    print(f"device={device} threads={torch.get_num_threads()} preset={args.preset} params={n_params:,} "
          f"prompt={args.prompt_tokens} new_tokens={args.new_tokens} torch={torch.__version__}")
    print(f"measured copy bandwidth: {bw:.1f} GB/s")
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "preset": args.preset, "params": n_params, "prompt_tokens": args.prompt_tokens,
              "new_tokens": args.new_tokens, "copy_bandwidth_gbs": bw, "torch": str(torch.__version__), "runs": []}
    print(f"{'dtype':>9} {'batch':>5} {'unpacked tok/s':>15} {'gpt2kit tok/s':>14} {'transformers tok/s':>19} "
          f"{'ratio':>6} {'weights GB/s (b=1)':>19}")
    for dtype_name in args.dtypes.split(","):
        dtype = getattr(torch, dtype_name)
        ours = GPT(cfg)
        ours.load_state_dict(base.state_dict())
        ours = ours.to(device=device, dtype=dtype).eval()
        theirs = hf_base.to(device=device, dtype=dtype) if hf_base is not None else None
        bytes_per_token = n_params * torch.finfo(dtype).bits // 8
        for B in (int(b) for b in args.batch_sizes.split(",")):
            idx = torch.randint(0, cfg.vocab_size, (B, args.prompt_tokens), device=device)
            t_ours = time_it(lambda ours=ours, idx=idx: generate(ours, idx, args.new_tokens, temperature=0), device,
                             args.repeats)
            tps_ours = B * args.new_tokens / t_ours
            tps_plain = float("nan")
            if device.type == "cpu":
                def plain(ours=ours, idx=idx):
                    return generate(ours, idx, args.new_tokens, temperature=0, packed=False)

                t_plain = time_it(plain, device, args.repeats)
                tps_plain = B * args.new_tokens / t_plain
            tps_hf = float("nan")
            if theirs is not None:
                mask = torch.ones_like(idx)

                def hf_run(theirs=theirs, idx=idx, mask=mask):
                    with torch.inference_mode():
                        theirs.generate(idx, attention_mask=mask, max_new_tokens=args.new_tokens,
                                        min_new_tokens=args.new_tokens, do_sample=False, pad_token_id=50256)

                tps_hf = B * args.new_tokens / time_it(hf_run, device, args.repeats)
            weights_gbs = bytes_per_token * (tps_ours / B) / 1e9
            bound = f"{weights_gbs:6.1f} ({weights_gbs / bw:4.0%} of copy bw)" if B == 1 else ""
            print(f"{dtype_name:>9} {B:>5} {tps_plain:>15.1f} {tps_ours:>14.1f} {tps_hf:>19.1f} "
                  f"{tps_ours / tps_hf:>5.2f}x {bound:>19}")
            report["runs"].append({
                "dtype": dtype_name, "batch_size": B, "gpt2kit_tokens_per_s": tps_ours,
                "unpacked_tokens_per_s": None if math.isnan(tps_plain) else tps_plain,
                "transformers_tokens_per_s": None if math.isnan(tps_hf) else tps_hf,
                "ratio_vs_transformers": None if math.isnan(tps_hf) else tps_ours / tps_hf,
                "weights_gbs": weights_gbs if B == 1 else None})
            _save(report, args.json)
    if args.quantize:
        _int8_rows(base, cfg, args, device, bw, report)
    if args.baseline == "ctranslate2":
        _ctranslate2_rows(base, cfg, args, report)


def _save(report: dict, path: str | None) -> None:
    if path:
        from gpt2kit.io import atomic_write_text

        atomic_write_text(path, json.dumps(report, indent=1) + "\n")


def _int8_rows(base: GPT, cfg: GPTConfig, args, device: torch.device, bw: float, report: dict) -> None:
    """gpt2kit's int8 model at each batch size; the bound is the int8 layers' bytes read once per token."""
    from gpt2kit.quantization import Int8Linear, quantize

    q = GPT(cfg)
    q.load_state_dict(base.state_dict())
    quantize(q.eval(), args.quantize)
    bytes_per_token = sum(m.weight_bytes for m in q.modules() if isinstance(m, Int8Linear))
    for B in (int(b) for b in args.batch_sizes.split(",")):
        idx = torch.randint(0, cfg.vocab_size, (B, args.prompt_tokens), device=device)
        t = time_it(lambda idx=idx: generate(q, idx, args.new_tokens, temperature=0), device, args.repeats)
        tps = B * args.new_tokens / t
        gbs = bytes_per_token * tps / B / 1e9
        bound = f"{gbs:6.1f} ({gbs / bw:4.0%} of copy bw)" if B == 1 else ""
        print(f"{'int8':>9} {B:>5} {'':>15} {tps:>14.1f} {'':>19} {'':>6} {bound:>19}")
        report["runs"].append({"dtype": "int8", "batch_size": B, "gpt2kit_tokens_per_s": tps,
                               "weights_bytes_per_token": bytes_per_token, "weights_gbs": gbs if B == 1 else None})
        _save(report, args.json)


def _ctranslate2_rows(base: GPT, cfg: GPTConfig, args, report: dict) -> None:
    """CTranslate2 on the same weights, converted and timed by benchmarks/ct2_worker.py in another process."""
    import subprocess
    import tempfile
    from pathlib import Path

    from gpt2kit.checkpoint import export_hf, save_checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        save_checkpoint(ckpt, {"model_config": cfg.to_dict(), "model": model_state_dict(base)})
        export_hf(ckpt, Path(tmp) / "hf")
        cmd = [args.ct2_python, str(Path(__file__).with_name("ct2_worker.py")), "--hf", str(Path(tmp) / "hf"),
               "--work", tmp, "--batch-sizes", args.batch_sizes, "--prompt-tokens", str(args.prompt_tokens),
               "--new-tokens", str(args.new_tokens), "--repeats", str(args.repeats),
               "--threads", str(torch.get_num_threads())]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out.strip().splitlines()[-1])
    ours = {(r["dtype"], r["batch_size"]): r["gpt2kit_tokens_per_s"] for r in report["runs"]}
    for r in rows:
        vs = {d: ours.get((d, r["batch_size"])) for d in ("float32", "int8")}
        ratios = "  ".join(f"gpt2kit {d} / this: {v / r['tokens_per_s']:.2f}x" for d, v in vs.items() if v)
        print(f"ctranslate2 {r['version']} {r['compute_type']:>7} batch {r['batch_size']:>3}: "
              f"{r['tokens_per_s']:8.1f} tok/s  {ratios}")
        report["runs"].append({"engine": "ctranslate2", **r})
    _save(report, args.json)


if __name__ == "__main__":
    main()
