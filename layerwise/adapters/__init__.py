"""Adapters: a selection turned into a peft adapter (nine methods), its export for other trainers, and
``suggest`` (card, selection and a portable peft config in one call). La-LoRA, whose ranks change while
training, is ``layerwise.train.lalora``.
"""
