"""The frozen prefix: blocks below the lowest adapted block, run without dropout, kept out of autograd and
of gradient checkpointing, and their output cached once per example (the prefix cache).
"""
