"""TADBot's device daemon: the Raspberry Pi side that listens, watches and speaks.

It hears the person (microphone or WAV file), grabs the latest webcam frame, sends both to the TADBot
server as one turn, and speaks the reply sentence by sentence as it streams back. It talks to the server
only through the HTTP contract, never through imports, so the Pi installs without the server's heavy model
libraries. Run it as `tadbot device` or `python -m device`.
"""
