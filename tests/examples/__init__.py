"""Tests of the example's trained models."""
