"""The Layer Card: per-layer metrics measured on calibration batches (the probe) or on the weights, their
stability and cost, and the card that records and renders them (``profile_layers`` makes one).
"""
