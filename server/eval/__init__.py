"""Offline evaluations of the server's components on labelled data: `tadbot eval ...`.

May import: anything in the server below the HTTP layer.
"""
