"""Tests of ``ignite_landscape.tensorboard``: what the handlers write, read back from the event files."""
