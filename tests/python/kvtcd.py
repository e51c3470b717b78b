"""A real kvtcd child process for the Python tests (as tests/integration/
itest.c starts one): port 0 read back from --port-file, a private temp dir,
SIGTERM at the end with exit status 0 required.

The build folder is $KVTC_BUILD (set by `make test`), else build/ of the
repository. The UCX environment is the integration tests': loopback, port
reuse, TCP only.
"""

import os
import shutil
import signal
import subprocess
import tempfile
import time

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.environ.get("KVTC_BUILD") or os.path.join(REPO, "build")
KVTCD = os.path.join(BUILD, "bin", "kvtcd")

# Sanitizer builds start slowly; a healthy daemon is up in well under this.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0

os.environ.setdefault("UCX_NET_DEVICES", "lo")
os.environ.setdefault("UCX_TCP_CM_REUSEADDR", "y")
os.environ.setdefault("UCX_TLS", "tcp")


class Daemon:
    """kvtcd on 127.0.0.1, any port. d.addr is "127.0.0.1:PORT"."""

    def __init__(self, host_mem="256M", extra=()):
        if not os.access(KVTCD, os.X_OK):
            raise FileNotFoundError("%s not built" % KVTCD)
        self.dir = tempfile.mkdtemp(prefix="kvtc-py-", dir=os.environ.get("TMPDIR"))
        self.log = os.path.join(self.dir, "kvtcd.log")
        data = os.path.join(self.dir, "data")
        os.mkdir(data)
        ports = os.path.join(self.dir, "ports")
        argv = [KVTCD, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
                "--host-mem", host_mem, "--data-dir", data, "--port-file", ports] + list(extra)
        # setpriv kills the daemon with us, whatever ends the test run.
        if shutil.which("setpriv"):
            argv = ["setpriv", "--pdeathsig", "KILL", "--"] + argv
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        self.port = self._wait_port(ports)
        self.addr = "127.0.0.1:%d" % self.port

    def _wait_port(self, path):
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError("kvtcd exited at start (%d):\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                with open(path) as fh:  # written atomically (rename)
                    port, admin = (int(x) for x in fh.read().split())
                if port > 0 and admin > 0:
                    return port
            except (OSError, ValueError):
                pass
            time.sleep(0.02)
        self.proc.kill()
        raise RuntimeError("kvtcd wrote no port file in %.0f s:\n%s"
                           % (START_TIMEOUT_S, self.log_tail()))

    def log_tail(self, n=4000):
        try:
            with open(self.log, "rb") as fh:
                return fh.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self):
        """SIGTERM; returns an error text (exit status, sanitizer report) or
        None when the daemon exited cleanly. Removes the temp dir."""
        problem = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                problem = "kvtcd did not exit within %.0f s of SIGTERM" % STOP_TIMEOUT_S
        if problem is None and self.proc.returncode != 0:
            problem = "kvtcd exit status %d after SIGTERM" % self.proc.returncode
        text = self.log_tail(1 << 20)
        if problem is None and any(s in text for s in ("AddressSanitizer", "LeakSanitizer",
                                                       "runtime error:")):
            problem = "kvtcd sanitizer report"
        if problem:
            problem += ":\n" + text[-4000:]
        shutil.rmtree(self.dir, ignore_errors=True)
        return problem
