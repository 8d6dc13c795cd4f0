"""The HTTP gateway: validates uploads, stores jobs, enqueues them by task name, reads results.

Imports eldefect.settings, eldefect.image_check, eldefect.broker, db and monitoring; never torch,
the model code or workers, nor numpy until an operator asks for drift reports (a test checks):
it starts in well under a second and stays small.
"""
