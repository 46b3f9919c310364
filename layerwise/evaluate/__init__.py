"""Evaluation beyond the training loop: inference timing, the run report against uniform LoRA and the
stability study's tables and plot.
"""
