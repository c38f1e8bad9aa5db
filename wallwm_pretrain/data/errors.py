"""The loader's input errors: one base class, so a caller (the train CLI, a fuzz test) can tell
"the data is wrong" from a bug by type.

Every message names the file (and the sample and key where there is one) in one line; the
classes below only say which part of the input was wrong.
"""

from __future__ import annotations


class InputError(ValueError):
    """Training input (a shard folder, a tar, a sample, a text file) is not what it must be."""


class ShardError(InputError):
    """The shard folder is missing, incomplete or does not match its index.json."""
