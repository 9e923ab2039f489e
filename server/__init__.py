"""The TADBot server: hears a turn, reads the face, decides a calm reply, and keeps the therapist's record.

Where things are, top down (each package may import only the layers below it, and its own modules;
tests/test_layering.py checks this):

- `cli/`, `serve.py` (with `notify.py`), `bench/`, `eval/`: the tools that start or measure the server;
  `for_training.py`: all that `training/` may use of it.
- `app.py`, `api/`, `dashboard/`: the HTTP layer. A turn enters at `api/device.py`.
- `conversation/`: where a reply is decided (`conversation/router.py`) and a session lives and ends.
  `access/`: who may reach which client.
- `speech/` (audio becomes words), `face/` (a frame becomes emotions), `safety/` (crisis, guard, exercises,
  commands), `memory/` (past sessions), `records/` (where a turn is written: SQLite).
- `models/`: model files, their catalogue, pulling, quantising and converting.
- `config.py` (its sections in `sections.py`), `datafiles.py`, `errors.py`: settings, the shipped data
  files, the error hierarchy.

May import: nothing of its own; the packages above carry their own rules.
"""
