"""Persistence: SQLAlchemy models, engine/session and Alembic migrations. Imports nothing of ours."""
