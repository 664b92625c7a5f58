"""Reading, checking and making MMSA feature files; imports neither MMSA nor torch.

``limits`` (the byte budget, the depth, the dtype allow-list) is shared by the two readers:
``unpickle`` (a small pickle VM for NumPy pickles) and ``safeformat`` (the pickle-free zip
format); ``load`` is the only module that knows both, and holds the parse cache, the per-file
fix-ups and the ``pickle``-module facade MMSA is given.  ``validation`` and ``lengths`` check
a loaded file; ``synthetic`` writes MMSA-Standard-layout files for the demo and the tests.
"""
