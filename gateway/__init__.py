"""The HTTP gateway: validates uploads, stores jobs, enqueues them by task name, reads results.

Imports eldefect.settings, eldefect.imaging, eldefect.broker, db and monitoring; never torch,
the model code or workers (a test checks), so it starts in well under a second.
"""
