"""The sink table the agent publishes in agent_dir (read by producer.c, the Lua module, the
nginx module and logpool.Pool): sink ids, names and the largest message each takes.

    logpool-agent-sinks 1
    <number of sinks>
    <max_message_size> <name>      (one line per sink, in id order)
"""
import json
import os

from logpool.errors import ConfigError

MAGIC = "logpool-agent-sinks 1"
NAME = "sinks"
MAX_SINKS = 256
MAX_NAME = 255


def producer_limit(sink):
    """The largest message a producer may log to this sink: its max_message_size less the
    framing the agent's pool adds (producers are refused with ETOOBIG before the ring)."""
    if sink.framing == "newline":
        return sink.max_message_size - 1
    if sink.framing == "octets":
        return sink.max_message_size - len(str(sink.max_message_size)) - 1
    return sink.max_message_size


def render(sinks):
    if len(sinks) > MAX_SINKS:
        raise ConfigError(f"agent mode: at most {MAX_SINKS} sinks, got {len(sinks)}")
    lines = [MAGIC, str(len(sinks))]
    for sink in sinks:
        if ("\n" in sink.name or "\r" in sink.name or '"' in sink.name or "\\" in sink.name
                or len(sink.name.encode()) > MAX_NAME):
            raise ConfigError(f"sinks[{sink.index}].name: in agent mode a name has no newline, "
                              f"quote or backslash and at most {MAX_NAME} bytes: {sink.name!r}")
        lines.append(f"{producer_limit(sink)} {sink.name}")
    return "\n".join(lines) + "\n"


def publish(agent_dir, sinks):
    """Written whole under a temporary name, then renamed: a producer reads a complete table."""
    text = render(sinks)
    tmp = os.path.join(agent_dir, f".{NAME}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        os.fchmod(fd, 0o644)
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, os.path.join(agent_dir, NAME))


def read(agent_dir):
    """[(max_message_size, name)] as published; ConfigError when absent or not a table."""
    path = os.path.join(agent_dir, NAME)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, encoding="utf-8") as f:
            lines = f.read(65536).split("\n")
    except OSError as exc:
        raise ConfigError(f"agent mode: cannot read {path}: {exc.strerror or exc}; is `python "
                          f"-m logpool agent` running with agent_dir {agent_dir}?") from None
    try:
        if lines[0] != MAGIC:
            raise ValueError
        count = int(lines[1])
        out = []
        for line in lines[2:2 + count]:
            size, name = line.split(" ", 1)
            out.append((int(size), name))
        if len(out) != count or count < 1:
            raise ValueError
        return out
    except (ValueError, IndexError):
        raise ConfigError(f"agent mode: {path} is not a sink table of this version") from None


class ProducerSink:
    __slots__ = ("index", "name", "url", "max_message_size")

    def __init__(self, index, name, url, max_message_size):
        self.index, self.name, self.url = index, name, url
        self.max_message_size = max_message_size


class ProducerConfig:
    """What logpool.Pool knows of an agent-mode pool: the agent's sinks."""

    def __init__(self, agent_dir, sinks):
        self.agent_dir = agent_dir
        self.sinks = tuple(sinks)

    def sink_index(self, sink):
        from logpool.config import sink_index
        return sink_index(self.sinks, sink)


def producer_config(text):
    """ProducerConfig for an agent-mode config ({"agent": dir, ...}), else None. The C side
    checks the keys again; this reads the names."""
    try:
        config = json.loads(text)
    except ValueError:
        return None
    if not isinstance(config, dict) or "agent" not in config:
        return None
    agent_dir = config["agent"]
    if not isinstance(agent_dir, str) or not agent_dir:
        raise ConfigError("agent: must be the agent's agent_dir, a non-empty string")
    unknown = sorted(set(config) - {"agent", "ring_bytes"})
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown key in agent mode (known: agent, ring_bytes; "
                          "sinks and their options are the agent's)")
    sinks = [ProducerSink(i, name, f"agent:{agent_dir}", size)
             for i, (size, name) in enumerate(read(agent_dir))]
    return ProducerConfig(agent_dir, sinks)
