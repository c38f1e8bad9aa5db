"""What every config section shares: the error type of user mistakes and the ``auto`` marker."""

from __future__ import annotations


class ConfigError(ValueError):
    """A user mistake in a preset or override (unknown key, wrong type, bad combination)."""


# A value read from the shards' index.json (data dims, text widths) unless set.
AUTO = "auto"
