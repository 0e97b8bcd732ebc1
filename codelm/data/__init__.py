"""Corpus stage: collect code, filter it, deduplicate it and split it into DATA/."""
