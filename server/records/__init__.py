"""Where a turn is written: the SQLite records (`schema.sql`), what a full or read-only disk becomes,
exporting a session for the therapist, and the retention purge.

May import: `models`, `config`, `datafiles`, `errors`.
"""
