# SPDX-License-Identifier: BSD-3-Clause
"""Real web and FTP servers on loopback for the curl protocol tests.

nginx serves http and https (a self-signed certificate made at start with
openssl) from a temporary docroot; /norange/ answers without byte ranges,
/auth/ asks for user "user" with password "secret", /cookie/ for the
cookie session=abc.
vsftpd serves anonymous ftp and implicit-TLS ftps from one directory.
Ports are picked free at start.  A small threaded Python server
(FaultServer) plays hostile or flaky web servers."""
import http.server
import os
import pwd
import shutil
import signal
import socket
import socketserver
import subprocess
import threading
import time

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
VSFTPD = shutil.which("vsftpd") or "/usr/sbin/vsftpd"
OPENSSL = shutil.which("openssl")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Exited(RuntimeError):
    """The server exited while starting: most likely a port free_port
    picked was taken by another process before the server could bind it."""


# Servers started on fresh ports after an Exited, at most.
START_ATTEMPTS = 5


def wait_port(port, proc, what, timeout=30):
    """Wait until something listens on port (or proc died: Exited)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise Exited("%s exited with %d" % (what, proc.returncode))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("%s did not listen on %d" % (what, port))


def make_cert(d):
    subprocess.run([OPENSSL, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", os.path.join(d, "key.pem"),
                    "-out", os.path.join(d, "cert.pem")],
                   check=True, capture_output=True)


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# Workers run as the user starting nginx (root here): pytest's temporary
# directories are closed to nginx's usual worker user.
NGINX_CONF = """user {user};
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log info;
daemon off;
events {{ worker_connections 256; }}
http {{
  access_log {d}/access.log;
  client_body_temp_path {d}/tmp/body;
  proxy_temp_path {d}/tmp/proxy;
  fastcgi_temp_path {d}/tmp/fcgi;
  uwsgi_temp_path {d}/tmp/uwsgi;
  scgi_temp_path {d}/tmp/scgi;
  default_type application/octet-stream;
  sendfile {sendfile};
  server {{
    listen 127.0.0.1:{http};
    listen 127.0.0.1:{https} ssl;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    root {d}/www;
    location /norange/ {{ max_ranges 0; }}
    location /auth/ {{ auth_basic "vdisk"; auth_basic_user_file {d}/htpasswd; }}
    location /cookie/ {{ if ($cookie_session != "abc") {{ return 403; }} }}
  }}
}}
"""


class Nginx:
    """nginx on two free ports: http and https, docroot self.root.  One
    worker copying through user space, unless debian_defaults: then as
    Debian's nginx.conf sets it up, one worker per processor and sendfile
    (what the benchmarks measure against)."""

    def __init__(self, d, debian_defaults=False):
        self.dir = d
        self.debian_defaults = debian_defaults
        self.root = os.path.join(d, "www")
        os.makedirs(os.path.join(self.root, "norange"))
        os.makedirs(os.path.join(d, "tmp"))
        for p in (d, self.root, os.path.join(self.root, "norange")):
            os.chmod(p, 0o755)
        make_cert(d)
        for sub in ("auth", "cookie"):
            os.makedirs(os.path.join(self.root, sub), mode=0o755)
        # /auth/ takes user "user" with password "secret".
        pw = subprocess.run([OPENSSL, "passwd", "-apr1", "secret"], check=True,
                            capture_output=True, text=True).stdout.strip()
        with open(os.path.join(d, "htpasswd"), "w") as f:
            f.write("user:%s\n" % pw)
        for attempt in range(START_ATTEMPTS):
            try:
                self._start(d)
                break
            except Exited:
                if attempt == START_ATTEMPTS - 1:
                    raise

    def _start(self, d):
        self.http_port, self.https_port = free_port(), free_port()
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.format(d=d, http=self.http_port, https=self.https_port,
                                      user=pwd.getpwuid(os.geteuid()).pw_name,
                                      workers="auto" if self.debian_defaults else 1,
                                      sendfile="on" if self.debian_defaults else "off"))
        self.proc = subprocess.Popen([NGINX, "-e", os.path.join(d, "error.log"),
                                      "-p", d, "-c", conf],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_port(self.http_port, self.proc, "nginx")
        wait_port(self.https_port, self.proc, "nginx")

    def put(self, name, src):
        dst = os.path.join(self.root, name)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)

    def url(self, name, tls=False):
        if tls:
            return "https://127.0.0.1:%d/%s" % (self.https_port, name)
        return "http://127.0.0.1:%d/%s" % (self.http_port, name)

    def stop(self):
        stop(self.proc)


VSFTPD_CONF = """listen=YES
listen_ipv6=NO
listen_address=127.0.0.1
listen_port={port}
background=NO
run_as_launching_user=NO
seccomp_sandbox=NO
secure_chroot_dir={d}/empty
anonymous_enable=YES
no_anon_password=YES
anon_root={d}/ftp
ftp_username=ftp
local_enable=NO
write_enable=NO
pasv_enable=YES
pasv_address=127.0.0.1
connect_from_port_20=NO
xferlog_enable=NO
pam_service_name=vsftpd
ssl_enable=YES
implicit_ssl={implicit}
allow_anon_ssl=YES
force_anon_logins_ssl=NO
force_anon_data_ssl=NO
require_ssl_reuse=NO
ssl_ciphers=HIGH
rsa_cert_file={d}/cert.pem
rsa_private_key_file={d}/key.pem
"""


class Vsftpd:
    """Two vsftpd: plain ftp and implicit ftps, both serving self.root."""

    def __init__(self, d):
        self.dir = d
        self.root = os.path.join(d, "ftp")
        os.makedirs(self.root)
        os.makedirs(os.path.join(d, "empty"))
        os.chmod(d, 0o755)
        os.chmod(self.root, 0o755)
        os.chmod(os.path.join(d, "empty"), 0o555)
        make_cert(d)
        self.procs = []
        self.ftp_port = self._start("ftp", "NO")
        self.ftps_port = self._start("ftps", "YES")

    def _start(self, name, implicit):
        for attempt in range(START_ATTEMPTS):
            try:
                return self._start_once(name, implicit)
            except Exited:
                if attempt == START_ATTEMPTS - 1:
                    raise

    def _start_once(self, name, implicit):
        port = free_port()
        conf = os.path.join(self.dir, "vsftpd-%s.conf" % name)
        with open(conf, "w") as f:
            f.write(VSFTPD_CONF.format(d=self.dir, port=port, implicit=implicit))
        os.chmod(conf, 0o600)
        p = subprocess.Popen([VSFTPD, conf], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        wait_port(port, p, "vsftpd")
        return port

    def put(self, name, src):
        dst = os.path.join(self.root, name)
        shutil.copyfile(src, dst)
        os.chmod(dst, 0o644)

    def url(self, name, tls=False):
        if tls:
            return "ftps://127.0.0.1:%d/%s" % (self.ftps_port, name)
        return "ftp://127.0.0.1:%d/%s" % (self.ftp_port, name)

    def stop(self):
        for p in self.procs:
            stop(p)


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves server.data with byte ranges; server.plan may change the
    answer of the n-th GET (see FaultServer)."""
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def _range(self):
        size = len(self.server.data)
        r = self.headers.get("Range", "")
        if not r.startswith("bytes="):
            return 0, size - 1, False
        a, b = r[6:].split("-")
        return int(a), min(int(b) if b else size - 1, size - 1), True

    def do_HEAD(self):
        fault = self.server.fault_for("HEAD")
        if fault == "redirect":
            return self._redirect()
        self.send_response(200)
        if self.server.head_length() >= 0:
            self.send_header("Content-Length", str(self.server.head_length()))
        if self.server.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()

    def _redirect(self):
        self.send_response(302)
        self.send_header("Location", self.path)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stall(self, a, b, body):
        """Headers and half the body, then nothing until the server stops."""
        self.send_response(206)
        self.send_header("Content-Range", "bytes %d-%d/%d" % (a, b, len(self.server.data)))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:len(body) // 2])
        self.wfile.flush()
        self.server.stopped.wait(60)
        self.close_connection = True

    def do_GET(self):
        self.server.enter()
        try:
            self._get()
        finally:
            self.server.leave()

    def _get(self):
        fault = self.server.fault_for("GET")
        a, b, ranged = self._range()
        body = self.server.data[a:b + 1]
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if fault == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if fault == "redirect":
            return self._redirect()
        if fault == "stall":
            return self._stall(a, b, body)
        status, cr = 206, "bytes %d-%d/%d" % (a, b, len(self.server.data))
        length = len(body)
        if fault == "wrong-range":
            cr = "bytes %d-%d/%d" % (a + 512, b + 512, len(self.server.data))
        elif fault == "short":
            length = len(body)
            body = body[:len(body) // 2]
            self.close_connection = True
        elif fault == "long":
            length = len(body) * 2
            body = body * 2
        elif fault == "no-range":
            status, cr = 200, None
            body = self.server.data
            length = len(body)
        self.send_response(status if ranged else 200)
        if cr and ranged:
            self.send_header("Content-Range", cr)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass


class FaultServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A web server with ranges whose answers a test scripts.

    faults maps a method to a list of (n, kind): the n-th request of that
    method (1-based) gets the fault kind ("drop", "503", "redirect",
    "wrong-range", "short", "long", "no-range", "stall"); kind "always:X" applies X
    to every request from the n-th on.  length (-1: none) overrides the
    Content-Length of HEAD.  With gather=k, a GET waits (at most 10 s)
    until k GETs are in flight at once; max_inflight records the most seen."""
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, data, faults=None, ranges=True, length=None, gather=0):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.gather = gather
        self.inflight = self.max_inflight = 0
        self.cond = threading.Condition()
        self.stopped = threading.Event()
        self.data = data
        self.faults = faults or {}
        self.ranges = ranges
        self.length = length
        self.counts = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    def enter(self):
        with self.cond:
            self.inflight += 1
            self.max_inflight = max(self.max_inflight, self.inflight)
            self.cond.notify_all()
            if self.gather:
                self.cond.wait_for(lambda: self.max_inflight >= self.gather, timeout=10)

    def leave(self):
        with self.cond:
            self.inflight -= 1

    def head_length(self):
        return self.length if self.length is not None else len(self.data)

    def fault_for(self, method):
        with self.lock:
            n = self.counts.get(method, 0) + 1
            self.counts[method] = n
        for at, kind in self.faults.get(method, []):
            if kind.startswith("always:") and n >= at:
                return kind[7:]
            if n == at:
                return kind
        return None

    def url(self, name="disk"):
        return "http://127.0.0.1:%d/%s" % (self.server_address[1], name)

    def stop(self):
        self.stopped.set()
        self.shutdown()
        self.server_close()
