"""The commands: the ``facesketch`` CLI, the demo, evaluation and default-model packaging.

The top layer: it uses every package below it (training, runtime, export, webui and
the torch-free core in facesketch/) and nothing imports it.
"""
