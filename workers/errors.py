"""Errors of the compute plane; each message names the instance (by UID) and the problem."""

from __future__ import annotations


class WorkerError(Exception):
    """Root of the workers' own errors."""


class DecodeError(WorkerError):
    """Pixel data cannot be decoded (unsupported syntax, truncated or corrupt data)."""


class BundleError(WorkerError):
    """A model bundle is missing, inconsistent or incompatible; names the field."""


class ResultError(WorkerError):
    """An SR or SC cannot be built from the prediction and its source."""
