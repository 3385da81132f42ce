"""One streaming pass over tokens feeding pluggable accumulators.

Modules: ``batch`` / ``accumulator`` (the contracts), ``runner`` (tokens -> forward passes
-> accumulators), ``moments`` (float64 co-moments from float32 GEMMs, Chan merges),
``finalize`` / ``summary`` / ``rotation`` (correlations, rotated baselines, per-neuron
summaries), ``planner`` (memory and tiling), ``checkpoint``, ``distributed``,
``correlate_pass`` / ``correlate_state`` (the correlate pass over loaded models and its
checkpoint state; the stage around it is ``stages.correlate``), and other stages'
accumulators (``activation_stats``, ``token_table``). Pure: no model loading, no run
directory but checkpoints, no imports from ``analysis`` or ``report``. Nothing is imported
here; import submodules.
"""
