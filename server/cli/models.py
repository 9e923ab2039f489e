"""`tadbot models` (list, pull, verify the catalogue's files) and finding a face model by path or name."""

from __future__ import annotations

import argparse
from pathlib import Path

from server.errors import TadbotError


def cmd_models(args: argparse.Namespace) -> int:
    from server.models import catalogue as models
    from server.models.pull import VerifyState, pull, verify

    catalogue = models.load_catalogue()
    directory = models.models_dir()
    if args.action == "list":
        print(f"{'role':<9} {'name':<54} {'size':>9}  {'here':<4}  license")
        for row in models.list_models(catalogue, directory):
            mark = ("yes" if row.present else "no") + ("*" if row.default else "")
            print(f"{row.role:<9} {row.name:<54} {row.size / 1e6:>7.1f}MB  {mark:<4}  {row.license}")
        print(f"(* = pulled by default; models dir: {directory})")
        return 0
    if args.action == "pull":
        for pulled in pull(catalogue, directory, roles=args.roles or None):
            print(f"{pulled.status:<10} {pulled.model}: {pulled.path}")
        return 0
    results = verify(catalogue, directory, roles=args.roles or None)
    for result in results:
        detail = f" ({result.detail})" if result.detail else ""
        print(f"{result.state:<24} {result.model}: {result.path}{detail}")
    return 0 if all(r.state == VerifyState.OK for r in results) else 1


def fer_model(chosen: str) -> Path:
    """An .onnx path, or a catalogue name or role whose .onnx has been pulled into the models dir."""
    from server.models.catalogue import load_catalogue, models_dir, resolve_model_path

    if chosen.endswith(".onnx") or Path(chosen).is_file():
        return resolve_model_path(chosen)
    (entry,) = load_catalogue().select([chosen])
    dests = [f.dest for f in entry.files if f.dest.endswith(".onnx")] + (
        [entry.pypi.dest] if entry.pypi else []
    )
    if not dests:
        raise TadbotError("unknown_model", f"--model {chosen}: that catalogue entry has no .onnx file")
    path = models_dir() / dests[0]
    if not path.is_file():
        raise TadbotError(
            "model_missing", f"--model {chosen}: {path} is missing; run `tadbot models pull {chosen}`"
        )
    return path
