"""The HTTP layer: validate, make one engine call, serialise. One blueprint per audience.

Audio and frames enter the server here (`device.py`); each route hands them to the conversation.
May import: `server.app` (the engines on the app), `conversation`, `access`, and the layers below them.
"""
