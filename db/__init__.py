"""Persistence: SQLAlchemy models, engine and session, Alembic migrations, data access.

Imports nothing of ours.
"""
