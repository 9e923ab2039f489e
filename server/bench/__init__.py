"""`tadbot bench`: measured speed, load, crash safety and privacy, with stand-in models built on this machine.

May import: anything in the server (it drives the whole of it).
"""
