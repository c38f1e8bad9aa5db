"""Error type of the conditioner: a bad model folder or input, named in the message."""


class ConditionerError(ValueError):
    """A missing or wrong VLM folder or file, or an input of the wrong shape, named."""
