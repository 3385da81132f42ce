"""Corpus access, tokenizing and memory-mapped token datasets.

Modules: ``bundled`` (the packaged corpus), ``sources`` (text from files, folders, saved
or hub datasets), ``tokens`` (tokenizer fingerprints, keep masks), ``dataset`` (building
and opening ``TokenDataset`` folders). Nothing is imported here; import submodules.
"""
