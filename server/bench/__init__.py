"""Tools for `tadbot bench`: stand-in models with the real models' compute cost, built on this machine."""
