"""Error type of the model-folder writers: a bad input the user can fix, named in the message."""


class ConvertError(Exception):
    """A missing or wrong input folder or file; the CLI prints it as one line, exit code 1."""
