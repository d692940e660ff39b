"""Detach Gallery."""
