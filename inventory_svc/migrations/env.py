"""Alembic environment: runs online against the engine handed over in config.attributes."""

from alembic import context

from inventory_svc.storage import Base

engine = context.config.attributes["engine"]
with engine.begin() as connection:
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
