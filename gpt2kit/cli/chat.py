"""``gpt2kit chat``: a conversation with a checkpoint in the terminal, streaming each reply."""

from __future__ import annotations

import argparse
import sys

from gpt2kit.cli.common import (
    add_checkpoint_argument,
    add_device_arguments,
    add_quantize_argument,
    add_sampling_arguments,
    check_sampling_arguments,
    positive_int,
)
from gpt2kit.errors import UserError

HELP = "talk to a checkpoint in the terminal (instruction-tuned: its chat template; base: continues your text)"
DESCRIPTION = """\
A terminal conversation that streams each reply. A checkpoint from `gpt2kit finetune sft` formats the
conversation with its stored template, as its multi-turn chat records were formatted in training; a base
model continues the text so far. The oldest turns are dropped when the conversation outgrows the context.
Ctrl-C stops the current reply, Ctrl-D (end of input) leaves. Sampling flags work as in `gpt2kit sample`;
one generator seeded by --seed serves the whole conversation, so the same inputs give the same replies.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_checkpoint_argument(p)
    p.add_argument("--system", default=None, help="a system message that starts the conversation (chat templates)")
    p.add_argument("--max-new-tokens", type=positive_int, default=None,
                   help="most tokens in one reply (default: 256, or half the model's context where that is less)")
    add_sampling_arguments(p, seed_help="random seed (same seed and inputs, same replies)")
    add_device_arguments(p)
    add_quantize_argument(p)


def run(args: argparse.Namespace) -> int:
    import signal

    import torch

    from gpt2kit.checkpoint import load_model
    from gpt2kit.cli.common import apply_quantize, resolve_dtype
    from gpt2kit.distributed import resolve_device
    from gpt2kit.generation import generate
    from gpt2kit.prompts import StreamDecoder, template_from_checkpoint, trim_conversation

    check_sampling_arguments(args)
    device = resolve_device(args.device)
    loaded = load_model(args.checkpoint, device=device, dtype=resolve_dtype(args.dtype))
    model, tok = loaded.model, loaded.tokenizer  # the vocabulary the model was trained on, GPT-2's or its own
    apply_quantize(args, model, "chat")
    block_size = model.config.block_size
    if args.max_new_tokens is None:
        args.max_new_tokens = min(256, block_size // 2)
    budget = block_size - args.max_new_tokens  # prompt tokens that leave room for a whole reply
    if budget < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens} leaves no room for the conversation in the "
                        f"model's context of {block_size} tokens; use at most {block_size // 2}")
    template = template_from_checkpoint(loaded.checkpoint, loaded.source)
    if template is None and args.system is not None:
        raise UserError(f"--system: {loaded.source} has no chat template (a base model continues text); leave "
                        "--system out, or use a checkpoint from `gpt2kit finetune sft`")
    # Ctrl-C stops a reply: Python installs that only where SIGINT was not ignored, and a shell's background job
    # starts with it ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    interactive = sys.stdin.isatty()
    how = f"template {template.name!r}" if template is not None else "a base model: it continues your text"
    print(f"chatting with {loaded.source} ({how}); Ctrl-C stops a reply, Ctrl-D leaves", file=sys.stderr)
    messages: list[dict[str, str]] = [{"role": "system", "content": args.system}] if args.system else []
    history = ""  # a base model's text so far
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = sys.stdout
    decoder = StreamDecoder(tok)  # flushed at the end of every reply
    reply: list[str] = []  # the reply being written, piece by piece

    def stream(next_id: torch.Tensor) -> None:
        piece = decoder.decode(int(next_id[0]))
        reply.append(piece)
        out.write(piece)
        out.flush()

    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            if interactive:
                out.write("\n")
            return 0
        except KeyboardInterrupt:
            out.write("\n(Ctrl-D leaves)\n")
            continue
        if not line.strip():
            continue
        if template is not None:
            messages, ids = trim_conversation([*messages, {"role": "user", "content": line}], template, tok, budget)
        else:
            history += ("\n" if history else "") + line
            ids = tok.encode(history)[-budget:]
        reply.clear()
        try:
            generate(model, torch.tensor([ids], dtype=torch.long, device=device), args.max_new_tokens,
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, generator=generator,
                     eos_id=tok.eot, on_token=stream)
        except KeyboardInterrupt:
            out.write(" [stopped]")  # what was said so far stays in the conversation
        reply.append(decoder.flush())
        out.write(reply[-1] + "\n")
        out.flush()
        if template is not None:
            messages.append({"role": "assistant", "content": "".join(reply)})
        else:
            history += "".join(reply)
