"""Tests of ``ignite_landscape.report``: the report built from a run's records and event files."""
