"""Tokenizers: GPT-2's BPE (the default, :func:`get_tokenizer`) and byte-level BPE vocabularies trained with
``gpt2kit tokenizer train`` (:func:`load_tokenizer` on their directory). Both are a :class:`Tokenizer`.

- :mod:`gpt2kit.tokenizer.core` — the tokenizer class, the packaged GPT-2 encoding, byte-level vocab strings;
- :mod:`gpt2kit.tokenizer.bpe` — training and the self-describing tokenizer directory.
"""

from gpt2kit.tokenizer.bpe import (
    MAX_VOCAB_SIZE,
    MIN_VOCAB_SIZE,
    checkpoint_tokenizer,
    compression,
    load_tokenizer,
    read_tokenizer_dir,
    save_tokenizer_dir,
    tokenizer_from_files,
    tokenizer_id,
    train_ranks,
    vocab_size_problem,
    write_tokenizer_files,
)
from gpt2kit.tokenizer.core import (
    EOT_ID,
    EOT_TOKEN,
    GPT2_PAT_STR,
    GPT2_RANKS_SHA256,
    TOKENIZER_ID,
    VOCAB_SIZE,
    Tokenizer,
    _bytes_to_unicode,
    byte_level_vocab,
    byte_level_vocab_of,
    get_tokenizer,
    hf_tokenizer_files,
    parse_ranks,
)

__all__ = [
    "EOT_ID", "EOT_TOKEN", "GPT2_PAT_STR", "GPT2_RANKS_SHA256", "MAX_VOCAB_SIZE", "MIN_VOCAB_SIZE", "TOKENIZER_ID",
    "VOCAB_SIZE", "Tokenizer", "_bytes_to_unicode", "byte_level_vocab", "byte_level_vocab_of", "checkpoint_tokenizer",
    "compression", "get_tokenizer", "hf_tokenizer_files", "load_tokenizer", "parse_ranks",
    "read_tokenizer_dir", "save_tokenizer_dir", "tokenizer_from_files", "tokenizer_id", "train_ranks",
    "vocab_size_problem", "write_tokenizer_files",
]
