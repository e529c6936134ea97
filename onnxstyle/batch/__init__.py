"""``onnxstyle batch``: every image of a folder, on local worker processes or Ray actors.

``items``: which inputs, which outputs, what is done; ``worker``: a warm stylizer taking
items one after another; ``pools``: local processes or Ray actors running workers;
``command``: the CLI command. Ray is imported only on the ``--ray`` path.
"""
