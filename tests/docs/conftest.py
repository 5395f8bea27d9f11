"""Tests of the documentation: links resolve, generated tables are current."""
