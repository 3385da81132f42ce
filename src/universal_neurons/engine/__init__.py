"""One streaming pass over tokens feeding pluggable accumulators.

Modules: ``batch`` / ``accumulator`` (the contracts), ``runner`` (tokens -> forward passes
-> accumulators), ``moments`` (float64 co-moments from float32 GEMMs, Chan merges),
``finalize`` / ``summary`` / ``rotation`` (correlations, rotated baselines, per-neuron
summaries), ``planner`` (memory and tiling), ``checkpoint``, ``distributed``,
``correlate`` (the correlate stage), and other stages' accumulators (``activation_stats``,
``token_table``). Nothing is imported here; import submodules.
"""
