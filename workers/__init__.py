"""Celery workers: batched inference, the sweep that keeps every job moving, model hot swap.

Imports eldefect, db (and monitoring); never imported by eldefect or gateway, which send
tasks by name.
"""
