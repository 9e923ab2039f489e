"""Reading a face from a frame: decode it in memory, find the face, align it, classify the emotion, smooth
the readings over a turn. The classifier's manifest says how to feed it.

May import: `models`, `config`, `datafiles`, `errors`.
"""
