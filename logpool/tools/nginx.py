"""Start and stop a real nginx (Debian's nginx-core + libnginx-mod-http-lua) in a temporary
prefix on a free port: used by the tests, the demo and the benchmarks. `modules` chooses the
dynamic modules it loads: the Lua module (default), or e.g. only logpool's native module
(NATIVE_MODULES) for plain nginx."""
import http.client
import os
import shutil
import signal
import socket
import subprocess
import time

from logpool import paths

MODULES = ("/usr/lib/nginx/modules/ndk_http_module.so",
           "/usr/lib/nginx/modules/ngx_http_lua_module.so")
LUA_MODULE = MODULES[1]


def native_modules():
    """Plain nginx with logpool's own module (no Lua)."""
    return (paths.nginx_module_path(),)


class NginxError(RuntimeError):
    """nginx refused its config, exited, or left a worker behind."""


class NginxMissing(RuntimeError):
    pass


def nginx_binary(modules=MODULES):
    path = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx")
                                     else None)
    if not path:
        raise NginxMissing("nginx is required (Debian: nginx-core libnginx-mod-http-lua; "
                           "`make deps`)")
    for module in modules:
        if not os.path.exists(module):
            hint = ("`make build`" if module == paths.nginx_module_path()
                    else "install libnginx-mod-http-lua")
            raise NginxMissing(f"{module} missing: {hint}")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CONF = """
{load_modules}
{user}
worker_processes {workers};
daemon off;
master_process on;
error_log logs/error.log info;
pid logs/nginx.pid;
worker_shutdown_timeout 10s;
{main_extra}

events {{ worker_connections 1024; }}

http {{
    log_format rid '$request_id';
    access_log logs/access.log rid;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    {package_path}
    {http_extra}

    server {{
        listen 127.0.0.1:{port}{listen_opts};
        keepalive_requests 1000000;
        location / {{
            return 200 "ok\\n";
        }}
        {server_extra}
    }}
}}
"""


class Nginx:
    def __init__(self, prefix, http_extra="", server_extra="", main_extra="", workers=2,
                 wrapper=(), package_path=True, listen_opts="", modules=MODULES, user=None):
        self.prefix = str(prefix)
        self.port = free_port()
        for d in ("conf", "logs", "tmp"):
            os.makedirs(os.path.join(self.prefix, d), exist_ok=True)
        conf = CONF.format(
            load_modules="\n".join(f"load_module {m};" for m in modules),
            user=(f"user {user};" if user else
                  "user root root;" if os.geteuid() == 0 else ""),
            workers=workers, main_extra=main_extra,
            package_path=(f'lua_package_path "{paths.lua_dir()}/?.lua;;";'
                          if package_path and LUA_MODULE in modules else ""),
            http_extra=http_extra, port=self.port, server_extra=server_extra,
            listen_opts=f" {listen_opts}" if listen_opts else "")
        self.conf_path = os.path.join(self.prefix, "conf", "nginx.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf)
        self.cmd = [*wrapper, nginx_binary(modules), "-p", self.prefix + "/", "-c", self.conf_path]
        check = subprocess.run(self.cmd + ["-t"], capture_output=True, text=True)
        if check.returncode != 0:
            raise NginxError(f"nginx -t refused the config: {check.stderr}")
        self.proc = None

    @property
    def error_log(self):
        return os.path.join(self.prefix, "logs", "error.log")

    @property
    def access_log(self):
        return os.path.join(self.prefix, "logs", "access.log")

    def start(self):
        # Until the configured error_log is open (init_by_lua runs then), nginx logs to
        # stderr: what systemd's journal shows an operator. Keep it next to error.log.
        self.stderr = open(os.path.join(self.prefix, "logs", "stderr.log"), "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=self.stderr)
        wait_for(self._serving, timeout=20, interval=0.02, what="nginx to serve")
        wait_for(lambda: len(self.worker_pids()) == self.workers_expected(), timeout=20,
                 what="nginx workers")
        return self

    def workers_expected(self):
        with open(self.conf_path) as f:
            for line in f:
                if line.strip().startswith("worker_processes"):
                    return int(line.split()[1].rstrip(";"))
        return 1

    def _serving(self):
        if self.proc.poll() is not None:
            raise NginxError(f"nginx exited: {self.read_error_log()[-2000:]}")
        try:
            return self.get("/")[0] == 200
        except OSError:
            return False

    def get(self, path="/", conn=None):
        own = conn is None
        conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            if own:
                conn.close()

    def requests(self, n, path="/", connections=4):
        """n requests over a few keep-alive connections; returns the statuses."""
        statuses = []
        conns = [http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                 for _ in range(connections)]
        try:
            for i in range(n):
                statuses.append(self.get(path, conns[i % connections])[0])
        finally:
            for c in conns:
                c.close()
        return statuses

    def worker_pids(self):
        if self.proc is None:
            return set()
        master = self.proc.pid
        pids = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == master and fields[0] != "Z":
                pids.add(int(entry))
        return pids

    def signal(self, sig):
        self.proc.send_signal(sig)

    def reload(self):
        old = self.worker_pids()
        self.signal(signal.SIGHUP)
        wait_for(lambda: not (self.worker_pids() & old), timeout=30, interval=0.02,
                 what="old workers to exit after reload")
        wait_for(lambda: len(self.worker_pids()) == self.workers_expected(), timeout=20,
                 what="new workers")

    def quit(self, timeout=30):
        """Graceful stop (QUIT); returns the master's exit code."""
        workers = self.worker_pids()
        self.signal(signal.SIGQUIT)
        rc = self.proc.wait(timeout=timeout)
        for pid in workers:
            if os.path.exists(f"/proc/{pid}") and not _zombie(pid):
                raise NginxError(f"worker {pid} still runs after quit")
        return rc

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            for pid in self.worker_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.kill()
            self.proc.wait(timeout=10)

    def read_error_log(self):
        """nginx's stderr during start-up, then error.log."""
        text = ""
        for path in (os.path.join(self.prefix, "logs", "stderr.log"), self.error_log):
            try:
                with open(path, errors="replace") as f:
                    text += f.read()
            except FileNotFoundError:
                pass
        return text

    def access_ids(self):
        with open(self.access_log) as f:
            return [line.strip() for line in f if line.strip()]


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def wrk(port, seconds, connections=16, threads=2, path="/"):
    exe = shutil.which("wrk")
    if not exe:
        raise NginxMissing("wrk is required (Debian package wrk; `make deps`)")
    return subprocess.Popen([exe, f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
                             f"http://127.0.0.1:{port}{path}"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def wait_for(predicate, timeout=10.0, interval=0.005, what="condition"):
    """Poll a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_until(t):
    """Sleep until monotonic time t: pacing a load scenario, not synchronisation."""
    delay = t - time.monotonic()
    if delay > 0:
        time.sleep(delay)
