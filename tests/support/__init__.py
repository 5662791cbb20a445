"""Helpers for the tests and benchmarks only (never imported by the package).

Tests import them as ``support.<module>`` (``tests/`` is on ``sys.path`` through the rootdir
``conftest.py``); benchmarks put the repository root on ``sys.path`` and import
``tests.support.<module>``.
"""
