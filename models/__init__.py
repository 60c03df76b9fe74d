"""Data layer: the only package that talks SQL. Tortoise models, migrations, cache-aside reads."""
