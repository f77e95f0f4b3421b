"""Agent mode: one `python -m logpool agent` per host drains every producer's shared-memory
ring (written by log_cdata in nginx workers, Lua, Python or C) into one ordinary in-process
pool. docs/agent.md describes the mode; logpool/csrc/ring.h the ring."""
