"""``gpt2kit sample``: generate text from any checkpoint, streaming tokens as they come."""

from __future__ import annotations

import argparse
import sys

from gpt2kit.cli.common import (
    add_checkpoint_argument,
    add_device_arguments,
    add_quantize_argument,
    add_sampling_arguments,
    check_sampling_arguments,
    nonneg_int,
    positive_int,
)
from gpt2kit.errors import UserError

HELP = "generate text from a checkpoint or GPT-2 weights"
DESCRIPTION = (
    "Generate text with a KV cache, streaming tokens to the terminal. Greedy with --temperature 0 or --top-k 1; "
    "otherwise seeded sampling with temperature, top-k and top-p."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(p)
    p.add_argument("--prompt", default=None,
                   help="text to continue; omitted: start from <|endoftext|> (unconditional samples)")
    p.add_argument("--instruction", default=None,
                   help="an instruction for a model from `gpt2kit finetune sft`: formatted with the prompt template "
                        "stored in the checkpoint (Alpaca when there is none); only the response is printed")
    p.add_argument("--input", default=None, help="optional input (context) for --instruction")
    p.add_argument("--max-new-tokens", type=nonneg_int, default=100, help="tokens to generate per sample")
    p.add_argument("--num-samples", type=positive_int, default=1, help="independent samples to draw")
    add_sampling_arguments(p, seed_help="random seed (same seed, same samples)")
    p.add_argument("--no-stop", action="store_true", help="keep going after <|endoftext|> instead of stopping there")
    add_device_arguments(p)
    add_quantize_argument(p)


def run(args: argparse.Namespace) -> int:
    import torch

    from gpt2kit.checkpoint import load_model
    from gpt2kit.cli.common import apply_quantize, loaded_description, resolve_dtype
    from gpt2kit.distributed import resolve_device
    from gpt2kit.generation import generate
    from gpt2kit.prompts import StreamDecoder

    check_sampling_arguments(args)
    if args.prompt is not None and args.prompt == "":
        raise UserError("--prompt is empty; give some text, or leave --prompt out for unconditional samples")
    if args.instruction is not None and args.prompt is not None:
        raise UserError("--prompt and --instruction: give one of them (--instruction is formatted with the template)")
    if args.input is not None and args.instruction is None:
        raise UserError("--input: goes with --instruction")
    if args.instruction is not None and not args.instruction.strip():
        raise UserError("--instruction is empty; give the task to perform")
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device=device, dtype=resolve_dtype(args.dtype))
    model, tok = loaded.model, loaded.tokenizer  # the vocabulary the model was trained on, GPT-2's or its own
    # stdout is the text itself; which weights made it goes to stderr
    print(f"sample: {loaded_description(args.checkpoint, loaded)}", file=sys.stderr)
    apply_quantize(args, model, "sample")
    echo = args.prompt  # what is printed before each continuation
    if args.instruction is not None:
        from gpt2kit.prompts import TEMPLATES, template_from_checkpoint

        template = template_from_checkpoint(loaded.checkpoint, loaded.source)
        if template is None:
            template = TEMPLATES["alpaca"]
            print(f"note: {loaded.source} stores no prompt template (not from `gpt2kit finetune sft`); using alpaca",
                  file=sys.stderr)
        prompt_ids = tok.encode(template.format_prompt(args.instruction, args.input or ""))
    else:
        prompt_ids = tok.encode(args.prompt) if args.prompt is not None else [tok.eot]
    if len(prompt_ids) > model.config.block_size:
        print(f"note: prompt has {len(prompt_ids)} tokens; only the last {model.config.block_size} fit the context",
              file=sys.stderr)
    idx = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    out = sys.stdout
    decoder = StreamDecoder(tok, skip_eot=not args.no_stop)  # flushed at the end of every sample

    def stream(next_id: torch.Tensor) -> None:
        out.write(decoder.decode(int(next_id[0])))
        out.flush()

    for i in range(args.num_samples):
        if args.num_samples > 1:
            out.write(f"--- sample {i + 1}/{args.num_samples} ---\n")
        if echo is not None:
            out.write(echo)
        out.flush()
        generate(
            model, idx, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            seed=args.seed + i, eos_id=None if args.no_stop else tok.eot, on_token=stream,
        )
        out.write(decoder.flush() + "\n")
        out.flush()
    return 0
