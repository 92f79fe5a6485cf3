# SPDX-License-Identifier: BSD-3-Clause
"""A real OpenSSH server on loopback for the ssh protocol tests and bench.

Sshd(d) makes a temporary ed25519 host key, a client key in an
authorized_keys file and a second, passphrase-protected one, starts sshd
(internal-sftp) on a free port of 127.0.0.1 and an ssh-agent holding the
unprotected client key, all under the directory d.  Images go in d/data.
env() is the environment for clients (SSH_AUTH_SOCK); the host key's
fingerprints and a known_hosts line are kept for host key checks."""
import base64
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen")
SSH_AGENT = shutil.which("ssh-agent")
SSH_ADD = shutil.which("ssh-add")

# Starts on fresh ports after sshd exited while starting, at most.
START_ATTEMPTS = 5

SSHD_CONFIG = """Port {port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp internal-sftp
LogLevel VERBOSE
"""


def available():
    """Why the server cannot start here, or None."""
    for prog in (SSHD, SSH_KEYGEN, SSH_AGENT, SSH_ADD):
        if not prog or not os.access(prog, os.X_OK):
            return "OpenSSH (sshd, ssh-keygen, ssh-agent, ssh-add) is needed"
    if os.geteuid() != 0:
        return "sshd needs root to start"
    return None


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def keygen(path, kind="ed25519", passphrase="", comment="vdisk-test"):
    args = [SSH_KEYGEN, "-q", "-t", kind, "-N", passphrase, "-C", comment, "-f", path]
    if kind == "rsa":
        args[4:4] = ["-b", "2048"]
    subprocess.run(args, check=True, capture_output=True)


def children(pid):
    """Pids of the processes whose parent is pid."""
    out = []
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % e) as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if int(fields[1]) == pid:
            out.append(int(e))
    return out


def kill_wait(proc, sig=signal.SIGTERM):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Sshd:
    """sshd and an ssh-agent under directory d (see the module's text)."""

    def __init__(self, d):
        self.dir = d
        self.data = os.path.join(d, "data")
        os.makedirs(self.data, exist_ok=True)
        os.chmod(d, 0o700)
        if not os.path.isdir("/run/sshd"):      # sshd's privilege separation dir
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        self.user = pwd.getpwuid(os.getuid()).pw_name
        self.key = os.path.join(d, "id_ed25519")
        self.key_pw = os.path.join(d, "id_rsa_pw")
        keygen(os.path.join(d, "host_key"))
        keygen(self.key)
        keygen(self.key_pw, "rsa", "secret")
        with open(os.path.join(d, "authorized_keys"), "w") as f:
            for k in (self.key, self.key_pw):
                with open(k + ".pub") as p:
                    f.write(p.read())
        self._host_key_hashes()
        self.sshd = self.agent = None
        try:
            self._start_agent()
            self._start_sshd()
        except BaseException:
            self.stop()
            raise

    def _host_key_hashes(self):
        with open(os.path.join(self.dir, "host_key.pub")) as f:
            self.host_key_pub = f.read().split()
        blob = base64.b64decode(self.host_key_pub[1])
        self.fingerprint = {n: hashlib.new(n, blob).hexdigest()
                            for n in ("md5", "sha1", "sha256")}

    def _start_agent(self):
        self.agent_sock = os.path.join(self.dir, "agent.sock")
        self.agent = subprocess.Popen([SSH_AGENT, "-D", "-a", self.agent_sock],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        end = time.monotonic() + 20
        while not os.path.exists(self.agent_sock):
            if self.agent.poll() is not None or time.monotonic() > end:
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.02)
        subprocess.run([SSH_ADD, "-q", self.key], env=self.env(), check=True,
                       capture_output=True, timeout=20)

    def _start_sshd(self):
        for attempt in range(START_ATTEMPTS):
            self.port = free_port()
            conf = os.path.join(self.dir, "sshd_config")
            with open(conf, "w") as f:
                f.write(SSHD_CONFIG.format(port=self.port, d=self.dir))
            subprocess.run([SSHD, "-t", "-f", conf], check=True, capture_output=True)
            self.log = open(os.path.join(self.dir, "sshd.log"), "a")
            self.sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", conf],
                                         stdout=self.log, stderr=self.log)
            if self._wait_listening():
                self.known_hosts = os.path.join(self.dir, "known_hosts")
                with open(self.known_hosts, "w") as f:
                    f.write("[127.0.0.1]:%d %s %s\n" % (self.port, *self.host_key_pub[:2]))
                return
            kill_wait(self.sshd)
            self.log.close()
        raise RuntimeError("sshd did not start: see %s/sshd.log" % self.dir)

    def _wait_listening(self, timeout=30):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.sshd.poll() is not None:
                return False            # the port was taken meanwhile
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
                    if s.recv(4).startswith(b"SSH-"):
                        return True
            except OSError:
                pass
            time.sleep(0.02)
        return False

    def env(self, agent=True):
        """The environment for clients: our agent, or none."""
        e = dict(os.environ)
        e.pop("SSH_AUTH_SOCK", None)
        if agent:
            e["SSH_AUTH_SOCK"] = self.agent_sock
        return e

    def path(self, name):
        return os.path.join(self.data, name)

    def url(self, name, check="no", user=True):
        """ssh://user@127.0.0.1:port/dir/name?host_key_check=check."""
        q = "?host_key_check=" + check if check else ""
        u = self.user + "@" if user else ""
        return "ssh://%s127.0.0.1:%d%s%s" % (u, self.port, self.path(name), q)

    def kill_sessions(self):
        """Kill sshd and every session process it started (connections
        drop at once)."""
        pids = [self.sshd.pid]
        for p in list(pids):
            pids += children(p)
        for p in reversed(pids):
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.sshd.wait()

    def stop(self):
        if self.sshd:
            kids = children(self.sshd.pid) if self.sshd.poll() is None else []
            kill_wait(self.sshd)
            for p in kids:
                try:
                    os.kill(p, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            self.log.close()
        if self.agent:
            kill_wait(self.agent)
