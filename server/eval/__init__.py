"""Offline evaluations of the server's components on labelled data: `tadbot eval ...`."""
