"""Moved to the package logpool.receive; this name stays for code that imports it."""
from logpool.receive import *  # noqa: F401,F403
