"""Runnable examples for ortbind."""
