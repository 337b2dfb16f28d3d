"""Corpora, preparation and datasets."""
