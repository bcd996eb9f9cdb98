"""A fork server for the crash tests: imports gpt2kit and torch once, then forks one child per run.

Why: every ``python -m gpt2kit ...`` pays ~2 s of imports on the 2-core CI machine, and the crash
tests need dozens of runs that are killed at random moments. A forked child runs the real command
line (``gpt2kit.cli.main(argv)``) in a process of its own, so SIGKILL/SIGTERM reach exactly what a
user's process would, with the imports already done. The server itself never runs a torch op, so
no OpenMP thread pool exists when it forks.

Protocol, one JSON object a line. The test writes a request::

    {"argv": [...], "cwd": DIR, "log": FILE, "env": {...}, "hooks": {...}}

and the server answers ``{"pid": PID}`` as soon as the child runs, then ``{"pid": PID, "returncode": RC}``
(negative: killed by that signal) when it ends. ``hooks`` are deterministic fault injections applied
inside the child only (see :func:`_install_hooks`), for windows that random timing rarely reaches.
"""

from __future__ import annotations

import json
import os
import signal
import sys


def _kill_self() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _install_hooks(hooks: dict) -> None:
    """Fault injections for this child.

    - ``threads``: N: torch intra-op threads (tiny models run faster on one, and the machine is shared).
    - ``skip_peak_flops``: true: the trainer does not measure the CPU matmul peak (MFU only).

    - ``fsize_limit``: N: no file may grow past N bytes (RLIMIT_FSIZE): a disk that fills up.
    - ``nan``: {"step": K, "where": "loss"|"grad", "count": N}: see :func:`_install_nan`.
    - ``kill_at_replace``: {"match": S, "nth": K, "when": "before"|"after"}: SIGKILL at the K-th
      (1-based) ``os.replace`` whose destination contains S, just before or just after the rename
      (the temporary file is complete and fsynced at that point).
    - ``kill_in_save``: {"match": S, "nth": K, "fraction": F}: at the K-th ``torch.save`` to a path
      whose name contains S (atomic writes save to ``.NAME.tmp.PID``), write only the first F of the
      serialized bytes to that path, then SIGKILL: a process killed in the middle of writing a checkpoint.
    - ``kill_in_dcp_write``: {"match": S, "nth": K}: SIGKILL just after the K-th tensor that
      torch.distributed.checkpoint writes into a file whose path contains S (this rank's part of a sharded
      checkpoint, cut off in the middle).
    - ``kill_in_gather``: {"nth": K}: SIGKILL at the K-th call of ``get_optimizer_state_dict`` (how an FSDP
      checkpoint gathers the full optimizer state on every rank, after the weights and before rank 0 writes).
    - ``keep_checkpoints``: DIR: hard-link every ``step_*.pt`` into DIR as it gets its final name, so a test can
      resume from a checkpoint that ``--keep-last`` pruned later (the run itself sees no difference).
    """
    if hooks.get("threads"):
        import torch

        torch.set_num_threads(int(hooks["threads"]))
    if hooks.get("skip_peak_flops"):
        # the trainer measures the CPU's matmul peak (about a second, both cores) at every start, for
        # MFU only; crash tests start dozens of runs, so they report MFU as unknown instead
        import gpt2kit.train.loop

        gpt2kit.train.loop.peak_flops = lambda *a, **kw: (None, "peak not measured (crash test)")
    if hooks.get("fsize_limit"):
        import resource

        # writes past this size fail with EFBIG, as on a full disk (SIGXFSZ would kill the process instead)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(hooks["fsize_limit"]), resource.RLIM_INFINITY))
    nspec = hooks.get("nan")
    if nspec:
        _install_nan(nspec)
    if hooks.get("keep_checkpoints"):
        keep_replace = os.replace

        def replace_and_keep(src, dst, *a, **kw):
            keep_replace(src, dst, *a, **kw)
            name = os.path.basename(os.fspath(dst))
            if name.startswith("step_") and name.endswith(".pt"):
                os.link(dst, os.path.join(hooks["keep_checkpoints"], name))

        os.replace = replace_and_keep
    gspec = hooks.get("kill_in_gather")
    if gspec:
        import torch.distributed.checkpoint.state_dict as dcp_state

        real_gather, calls = dcp_state.get_optimizer_state_dict, [0]

        def gather(*a, **kw):
            calls[0] += 1
            if calls[0] == gspec["nth"]:
                _kill_self()
            return real_gather(*a, **kw)

        dcp_state.get_optimizer_state_dict = gather
    rspec = hooks.get("kill_at_replace")
    if rspec:
        real_replace, seen = os.replace, [0]

        def replace(src, dst, *a, **kw):
            if rspec["match"] in os.fspath(dst):
                seen[0] += 1
                if seen[0] == rspec["nth"] and rspec["when"] == "before":
                    _kill_self()
                real_replace(src, dst, *a, **kw)
                if seen[0] == rspec["nth"] and rspec["when"] == "after":
                    _kill_self()
                return
            real_replace(src, dst, *a, **kw)

        os.replace = replace
    sspec = hooks.get("kill_in_save")
    if sspec:
        import io

        import torch

        real_save, seen = torch.save, [0]

        def save(obj, f, *a, **kw):
            if isinstance(f, (str, os.PathLike)) and sspec["match"] in os.path.basename(os.fspath(f)):
                seen[0] += 1
                if seen[0] == sspec["nth"]:
                    buf = io.BytesIO()
                    real_save(obj, buf, *a, **kw)
                    data = buf.getvalue()
                    with open(f, "wb") as out:
                        out.write(data[: int(len(data) * sspec["fraction"])])
                    _kill_self()
            return real_save(obj, f, *a, **kw)

        torch.save = save
    dspec = hooks.get("kill_in_dcp_write")
    if dspec:
        import torch.distributed.checkpoint.filesystem as dcp_fs

        real_write, written = dcp_fs._write_item, [0]

        def write_item(transforms, stream, *a, **kw):
            out = real_write(transforms, stream, *a, **kw)
            if dspec["match"] in str(getattr(stream, "name", "")):
                written[0] += 1
                if written[0] == dspec["nth"]:
                    stream.flush()
                    _kill_self()
            return out

        dcp_fs._write_item = write_item


def _install_nan(spec: dict) -> None:
    """Poison training step ``spec["step"]`` (and the ``spec.get("count", 1) - 1`` after it) with a NaN.

    ``where``: ``loss`` multiplies the training loss by NaN; ``grad`` writes a NaN into one gradient
    element just before the trainer clips the gradient norm (the loss stays finite).
    """
    import torch

    first, last = spec["step"], spec["step"] + spec.get("count", 1) - 1
    if spec["where"] == "loss":
        import gpt2kit.train.loop as loop

        real_wrap, calls = loop.wrap_model, [0]

        def wrap_model(*a, **kw):
            # the module the loop trains through (a GPT, or a wrapper computing its loss): poison its output
            module = real_wrap(*a, **kw)
            real_forward = module.forward

            def forward(idx, targets=None, *args, **kwargs):
                logits, loss = real_forward(idx, targets, *args, **kwargs)
                if targets is not None and module.training:
                    calls[0] += 1  # one training forward per step (no gradient accumulation in these runs)
                    if first <= calls[0] <= last:
                        loss = loss * float("nan")
                return logits, loss

            module.forward = forward
            return module

        loop.wrap_model = wrap_model
    else:
        real_clip, calls = torch.nn.utils.clip_grad_norm_, [0]

        def clip(params, *a, **kw):
            params = list(params)
            calls[0] += 1
            if first <= calls[0] <= last:
                g = next(p.grad for p in params if p.grad is not None)
                g.view(-1)[0] = float("nan")
            return real_clip(params, *a, **kw)

        torch.nn.utils.clip_grad_norm_ = clip


def _child(req: dict) -> None:
    os.setpgid(0, 0)  # its own process group, so a test can also kill the whole job (workers included)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(req.get("cwd") or os.getcwd())
    os.environ.update(req.get("env") or {})
    fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    _install_hooks(req.get("hooks") or {})
    from gpt2kit.cli import main

    code = 1
    try:
        code = main(req["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def serve() -> None:
    """Read requests from stdin until it closes; answer on stdout."""
    import torch  # noqa: F401  (imported once here so children start at once)

    import gpt2kit.cli
    from gpt2kit.tokenizer import get_tokenizer

    # torch._dynamo: AdamW's constructor imports it (about 2 s)
    for name in ("tqdm", "numpy", "torch._dynamo", "gpt2kit.data.prepare", "gpt2kit.data.loader",
                 "gpt2kit.cli.prepare", "gpt2kit.checkpoint", "gpt2kit.generation", "gpt2kit.eval.loss",
                 "gpt2kit.train", "gpt2kit.train.pretrain", "gpt2kit.cli.train", "gpt2kit.cli.finetune",
                 "gpt2kit.finetune.batching", "gpt2kit.model.lora", "gpt2kit.finetune.classifier"):
        try:
            __import__(name)
        except ImportError:
            pass
    gpt2kit.cli.build_parser()
    get_tokenizer().encode("warm up the tokenizer")
    out = sys.stdout
    print(json.dumps({"ready": True}), file=out, flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        # the log exists before the child does: a kill at a random moment can land before the child opens it
        open(req["log"], "wb").close()
        pid = os.fork()
        if pid == 0:
            _child(req)
        try:
            os.setpgid(pid, pid)  # also here, so the group exists before the test can signal it
        except OSError:
            pass  # the child already did it (or already exited)
        print(json.dumps({"pid": pid}), file=out, flush=True)
        _, status = os.waitpid(pid, 0)
        rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        print(json.dumps({"pid": pid, "returncode": rc}), file=out, flush=True)


if __name__ == "__main__":
    serve()
