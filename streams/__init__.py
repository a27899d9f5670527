"""Faust stream processors that keep the read models current."""
