"""Exceptions shared by the package."""

from __future__ import annotations


class MissingDependency(ImportError):
    """A library or system package softphone needs is not installed.

    The message says what to install; the CLI prints it as one line.
    """
