"""Tests that boot a real Open WebUI (marked `integration`)."""
