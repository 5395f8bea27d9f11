"""The CLI, demo and ingest tests share no fixtures of their own.

tests/conftest.py holds the session's bundles (the ingest tests serve its video bundle);
tests/support/cli_checks.py runs `hashbridge` in-process.
"""
