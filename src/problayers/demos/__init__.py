"""Demos built on problayers (run through the ``problayers`` command line)."""
