"""The therapist's web dashboard: server-rendered pages over the records, no JavaScript needed, nothing
from a CDN."""
