"""Tests of ``ignite_landscape.measures``: each measure function against dense float64 ground truth."""
