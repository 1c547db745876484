"""Engine: the network, its optimizers, the solo and stacked training loops, evaluation modes and
probes. Tensors in, results out: no files, no configs read from disk, no knowledge of sweeps.

Add a model option in engine/model.py (and its field in config/_schema.py).
"""
