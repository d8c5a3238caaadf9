"""Column types the migrations share where SQLite and PostgreSQL must differ."""

import sqlalchemy as sa

# Surrogate ids of append-mostly tables (rollups, audit, alert history, ...).
# SQLite: INTEGER, so that the column stays the 64-bit rowid (BIGINT would
# not be). PostgreSQL: BIGINT, since a large fleet writes more than 2**31
# rollup rows within months.
ID_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
