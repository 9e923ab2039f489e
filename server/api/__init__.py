"""The HTTP layer: validate, make one engine call, serialise. One blueprint per audience."""
