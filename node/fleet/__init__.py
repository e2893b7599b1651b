"""Fleet mode: many nodes, one PostgreSQL (psycopg 3, the optional `fleet` extra).

`schema`: the PostgreSQL tables and their ordered migrations. `exporter`: the thread that copies
every final local meter row to PostgreSQL exactly once. `billing`: reports over the whole fleet.
Nothing here knows HTTP; the local SQLite meter is reached only through `node.meter.Meter`.
"""
