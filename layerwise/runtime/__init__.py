"""The runtime floor: files, memory, progress, logging quieting, user errors, devices, processes and figures.

Everything above imports from here; nothing here imports the rest of layerwise.
"""
