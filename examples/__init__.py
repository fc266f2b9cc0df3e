"""Runnable examples of the Python API (docs/api.md); each is run by a test in tests/test_examples.py."""
