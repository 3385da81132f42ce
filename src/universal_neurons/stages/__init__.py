"""Stages: one module per stage, each ``run_<stage>(config) -> result``.

A stage is the one place that loads models, opens datasets, checks and writes the run
directory and records itself in the manifest; the work in between is ``engine`` (streaming
passes) and ``analysis`` (pure computations). Modules: ``correlate`` (cross-model
correlations and universality), ``stats`` (activation statistics), ``properties`` (how
universal neurons differ), ``families`` (neuron families), ``attention``
(attention-deactivation neurons). Nothing is imported here; import submodules.
"""
