"""Errors that n6onnx reports to users (clear message, non-zero exit)."""


class N6Error(Exception):
    """A user-facing error: bad input, unsupported model, failed gate set-up, ..."""

    exit_code = 2


class BadModelError(N6Error):
    """The input file is not a loadable, supported ONNX model."""


class BadArgumentError(N6Error):
    """A command-line or API argument is invalid (unknown pass, bad path, ...)."""


class ProviderUnavailableError(BadArgumentError):
    """The requested execution provider is not in this onnxruntime build, or did not load."""
