"""The HTTP front end: FastAPI routes over the shared job and model stores.

Never imports torch; uploads are checked with the core's torch-free archive
and spec rules, and work is sent to the workers by task name.
"""
