"""Fixtures shared by the example tests."""

from .textgen import builds

__all__ = ["builds"]
