"""Models by the field's names, and one adapter per architecture.

``registry`` (aliases, suites, spec resolution; light, no torch), ``loading``
(``load_model``, ``LoadedModel``, tokenizer checks), ``adapters`` (hooks, sizes and
processed weights per HF ``model_type``), ``weights`` (TransformerLens's weight
processing). Nothing is imported here; import submodules.
"""
