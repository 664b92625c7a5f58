"""Reading, checking and making MMSA feature files; imports neither MMSA nor torch.

``limits`` (the byte budget, the depth, the dtype allow-list) is shared by the two readers:
``unpickle`` (a small pickle VM for NumPy pickles) and ``safeformat`` (the pickle-free zip
format); ``load`` is the only module that knows both, and holds the parse cache, the per-file
fix-ups and the ``pickle``-module facade MMSA is given.  ``validation`` and ``lengths`` check
a loaded file (reading a dataset's keys and ranges from its spec, :mod:`mmin_plugin.datasets`);
``infer`` reads a new dataset's spec from its file; ``synthetic`` writes MMSA-Standard-layout files
for the demo and the tests. The builder of feature files from your own clips needs torch and lives
in :mod:`mmin_plugin.integration.builder`.
"""
