"""Errors the runner raises, and the exit code each one ends the process with.

    RunnerError                       base; exit 1 (retryable) unless a subclass says otherwise
    ├── InvalidInputError             exit EXIT_INVALID_INPUT (42): never worth retrying
    │   ├── InvalidSpecError          the resource's spec does not validate
    │   ├── InputNotFoundError        an input URI names no object (or an empty prefix)
    │   ├── InvalidImageError         corrupt, truncated, zero-byte, oversized or too many pixels
    │   ├── InvalidOutputError        the output URI is an existing file, or cannot be written
    │   ├── InvalidVideoError         unreadable video, or one with no frames
    │   ├── ModelNotAllowedError      a CC-BY-NC checkpoint without research mode
    │   ├── EmptyReconstructionError  the input produced no surface
    │   ├── FloorPlanError            the geometry holds no floor or no enclosed room
    │   └── MeasurementError          a point outside the image or without depth, a bad reference box
    ├── ModelLoadError                weights missing or unreadable (deployment problem; retryable)
    └── StorageError                  the object store failed (network, permissions; retryable)

Anything else (a bug, CUDA OOM, a killed pod) also exits 1 and the Job retries it.
"""

from __future__ import annotations

import re

from spatialforge.crds.constants import EXIT_INVALID_INPUT

EXIT_OK = 0
EXIT_RETRYABLE = 1
# `<_io.BytesIO object at 0x7f..>` and the like: a reason must read the same on every run.
_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9A-Fa-f]+>")


def _one_line(text: str) -> str:
    return _ADDRESS.sub("the data", " ".join(text.split()))


class RunnerError(Exception):
    """Base of every runner error; `exit_code` is what the process ends with."""

    exit_code: int = EXIT_RETRYABLE
    retryable: bool = True

    @property
    def reason(self) -> str:
        """One line for the termination message and the operator's condition."""
        text = _one_line(str(self)) or type(self).__name__
        return f"{type(self).__name__}: {text}"[:1024]


class InvalidInputError(RunnerError):
    """The input can never succeed: the Job's pod-failure policy fails it at once."""

    exit_code = EXIT_INVALID_INPUT
    retryable = False


class InvalidSpecError(InvalidInputError):
    """The spec does not validate against the pydantic model."""


class InputNotFoundError(InvalidInputError):
    """An input URI names no object, or a prefix that holds no usable file."""


class InvalidImageError(InvalidInputError):
    """An image is corrupt, truncated, empty, or larger than the spec allows."""


class InvalidOutputError(InvalidInputError):
    """The output location cannot take results: an existing file, no such bucket, no permission.
    Checked before the model loads."""


class InvalidVideoError(InvalidInputError):
    """A video cannot be decoded or holds no frames."""


class ModelNotAllowedError(InvalidInputError):
    """The spec asks for a checkpoint this deployment may not run (licence)."""


class EmptyReconstructionError(InvalidInputError):
    """Fusion produced no surface (no usable depth, or no camera could be posed)."""


class FloorPlanError(InvalidInputError):
    """No floor plan in the geometry: no floor plane, no walls at the slice height, or no enclosed room."""


class MeasurementError(InvalidInputError):
    """A measurement cannot be made: a point outside the depth map or with no valid depth, a bad reference box."""


class ModelLoadError(RunnerError):
    """The weights could not be found or loaded from the configured location."""


class StorageError(RunnerError):
    """The object store failed in a way that a retry may fix; `code` is the store's error code."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


def exit_code_for(exc: BaseException) -> int:
    """The process exit code for an exception that ended the run."""
    if isinstance(exc, RunnerError):
        return exc.exit_code
    return EXIT_RETRYABLE


def reason_for(exc: BaseException) -> str:
    """A one-line reason for any exception."""
    if isinstance(exc, RunnerError):
        return exc.reason
    text = _one_line(str(exc))
    return f"{type(exc).__name__}: {text}"[:1024] if text else type(exc).__name__
