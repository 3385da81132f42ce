"""universal-neurons: find and explain universal neurons across seeds of language models.

Nothing heavy is imported here; import submodules explicitly.
"""

__version__ = "0.1.0"
