"""Adapters: a selection turned into a peft adapter (nine methods), its export for other trainers,
``suggest`` (card, selection and a portable peft config in one call) and La-LoRA's adaptive ranks.
"""
