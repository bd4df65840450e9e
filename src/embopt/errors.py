"""Errors that stages turn into one clear line and a non-zero exit code."""


class EmboptError(Exception):
    """A user-facing error: bad input, bad params, missing file. Printed as one line."""


class ParamsError(EmboptError):
    """params.yaml is malformed: an unknown key, a wrong type, a missing value."""


class DataError(EmboptError):
    """An input data file is missing, empty or malformed."""


class GateFailed(EmboptError):
    """A quality or speed threshold from params.yaml was missed."""
