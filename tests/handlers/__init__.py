"""Tests of ``ignite_landscape.handlers``: handlers attached to Ignite trainers, their options, budget and memory."""
