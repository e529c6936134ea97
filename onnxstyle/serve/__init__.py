"""``onnxstyle serve``: stylization as an HTTP service for an edge box (the ``[serve]`` extra).

Layout: :mod:`.settings` (the service's frozen configuration), :mod:`.store` (the SQLite job
table and each job's folder), :mod:`.intake` (uploads checked and decoded into a job's
inputs), :mod:`.worker` (a worker process: one warm Stylizer, one job at a time),
:mod:`.workers` (the pool that supervises them), :mod:`.events` (progress fanned out to
Server-Sent Events), :mod:`.app` (the FastAPI routes and the uvicorn server); the CLI command is
:mod:`onnxstyle.commands.serve`. Only :mod:`.app` imports FastAPI, so the CLI stays light
and worker processes never load the web stack.
"""
