"""Evaluation data files: a local ``--data`` file, else a cached download from the official location.

The cache lives in ``$GPT2KIT_CACHE`` if set, else ``$XDG_CACHE_HOME/gpt2kit``, else
``~/.cache/gpt2kit``. Downloads are written atomically, so an interrupted download never leaves a
truncated file that a later run would trust.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt2kit.errors import UserError
from gpt2kit.io import atomic_path


def cache_root() -> Path:
    """The gpt2kit cache directory (not created)."""
    if os.environ.get("GPT2KIT_CACHE"):
        return Path(os.environ["GPT2KIT_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gpt2kit"


def download(url: str, dest: Path, *, what: str, timeout: float = 30.0, flag: str = "--data") -> Path:
    """Fetch ``url`` into ``dest`` atomically with a progress bar on stderr; a UserError when it fails."""
    import urllib.error
    import urllib.request

    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(dest) as tmp:
            total = resp.headers.get("Content-Length")
            with open(tmp, "wb") as f, tqdm(
                total=int(total) if total else None, unit="B", unit_scale=True, desc=f"download {dest.name}",
                dynamic_ncols=True,
            ) as bar:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"{flag}: no file given and downloading {what} from {url} failed ({reason}); "
            f"the network may be unreachable: download it elsewhere and pass {flag} FILE"
        ) from None
    return dest


def resolve_data_file(
    data: str | os.PathLike | None, *, url: str, filename: str, what: str, cache_dir: str | os.PathLike | None = None,
    flag: str = "--data",
) -> Path:
    """``data`` when given (it must exist), else ``cache_dir/filename``, downloaded from ``url`` on first use."""
    if data is not None:
        path = Path(data)
        if not path.is_file():
            raise UserError(f"{flag} {path}: no such file; pass the {what} JSONL file ({flag} FILE)")
        return path
    dest = Path(cache_dir) / filename if cache_dir is not None else cache_root() / filename
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    return download(url, dest, what=what, flag=flag)

