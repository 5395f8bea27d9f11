"""The bundle tests share no fixtures of their own; tests/conftest.py holds the session's."""
