"""The therapist's web dashboard: server-rendered pages over the records, no JavaScript needed, nothing
from a CDN.

May import: `server.app`, `access`, `conversation`, and the layers below them.
"""
