"""The `tadbot` command: parses flags and calls into the server; each subcommand is a thin shell.

May import: anything in the server.
"""
