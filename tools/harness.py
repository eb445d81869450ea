"""A real `tunerd serve` process for the reliability tools and tests, and what to measure on it.

    with DaemonProcess(workdir) as d:          # emulated big.LITTLE of CPUs 0-1, ipc sockets in workdir
        Client(d.frames).infer(x)
        d.footprint()                           # PSS/RSS of the daemon + its workers, fds, shared memory

The first start on a state directory calibrates (a few seconds) and caches the result in
STATE_DIR/hints; pass one ``state_dir`` to every daemon of a run to start the others fast.
Used by tools/fuzz_frames.py, tools/soak.py, tools/torture_reconfig.py and tests/test_reliability.py,
tests/test_security.py (which put tools/ on sys.path).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

import tunerd
from tunerd.wire.client import ControlClient

BIN = Path(sys.executable).parent
MODEL, SIZE = "zoo:squeezenet", 32
SPEC = "emulate:big=0@1.0,little=1@0.5"


@dataclass(frozen=True)
class Footprint:
    """The daemon and its descendants (stage workers, multiprocessing helpers), summed."""

    processes: int
    pss_bytes: int
    rss_bytes: int
    fds: int
    memfds: int          # open memfd descriptors (the pipeline's rings)
    dev_shm: int         # entries under /dev/shm owned by these processes' names (should stay 0)

    def to_dict(self) -> dict:
        return {"processes": self.processes, "pss_mib": round(self.pss_bytes / 2**20, 2),
                "rss_mib": round(self.rss_bytes / 2**20, 2), "fds": self.fds, "memfds": self.memfds,
                "dev_shm": self.dev_shm}


def tree(pid: int) -> list[psutil.Process]:
    """The process and its live descendants."""
    try:
        root = psutil.Process(pid)
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_stage_worker(p: psutil.Process) -> bool:
    """A spawned stage worker (not the multiprocessing resource tracker, which is also a child)."""
    try:
        cmd = " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return "spawn_main" in cmd


def footprint(pid: int) -> Footprint:
    pss = rss = fds = memfds = 0
    procs = tree(pid)
    for p in procs:
        try:
            info = p.memory_full_info()
            pss += info.pss
            rss += info.rss
            fd_dir = f"/proc/{p.pid}/fd"
            for fd in os.listdir(fd_dir):
                fds += 1
                try:
                    memfds += os.readlink(f"{fd_dir}/{fd}").startswith("/memfd:")
                except OSError:
                    pass
        except (psutil.NoSuchProcess, FileNotFoundError):
            continue
    try:
        shm = sum(1 for name in os.listdir("/dev/shm") if name.startswith("tunerd"))
    except OSError:
        shm = 0
    return Footprint(len(procs), pss, rss, fds, memfds, shm)


def make_sysfs(workdir: Path, spec: str = SPEC) -> Path:
    from tunerd.platform.fakesysfs import make_emulated_tree
    root = workdir / "fs" / "sys"
    return root if root.exists() else make_emulated_tree(spec, workdir / "fs")


class DaemonProcess:
    """``tunerd serve`` on ipc sockets ``workdir/NAME-frames.sock`` and ``NAME-control.sock``."""

    def __init__(self, workdir: str | os.PathLike, *, name: str = "d", state_dir: str | os.PathLike | None = None,
                 model: str = MODEL, size: int = SIZE, spec: str = SPEC, config_text: str | None = None,
                 extra: tuple[str, ...] = (), start: bool = True, ready_timeout: float = 180.0,
                 ctl_options: dict | None = None, backend: str | None = "numpy", env: dict | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.sysfs = make_sysfs(self.workdir, spec)
        self.frames = f"ipc://{self.workdir}/{name}-frames.sock"
        self.control = f"ipc://{self.workdir}/{name}-control.sock"
        self.state_dir = Path(state_dir) if state_dir else self.workdir / "state"
        self.argv = [str(BIN / "tunerd"), "serve", "--model", model, "--input-size", str(size), "--platform", spec,
                     "--sysfs-root", str(self.sysfs), "--frames", self.frames, "--control", self.control,
                     "--state-dir", str(self.state_dir), "--budget", "12", "--log-level", "info", *extra]
        # NOTE: numpy unless told: the callers compare replies with the numpy reference (Model.run on
        # numpy) to the last bit; None leaves the choice to the daemon's configuration (auto)
        self.backend = backend
        if backend is not None and "--backend" not in extra:
            self.argv += ["--backend", backend]
        if config_text is not None:
            path = self.workdir / f"{name}.toml"
            path.write_text(config_text)
            self.argv[2:2] = ["--config", str(path)]
        self.log_path = self.workdir / f"{name}.log"
        self.proc: subprocess.Popen | None = None
        self.ready_timeout = ready_timeout
        self.ctl_options = dict(ctl_options or {})     # e.g. CURVE keys for ControlClient
        self.env = None if env is None else {**os.environ, **env}    # added to this process's environment
        if start:
            self.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def start(self) -> "DaemonProcess":
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, env=self.env)
        try:
            self.wait_ready(self.ready_timeout)
        except BaseException:
            # NOTE: the caller gets no object to stop (the constructor raised): never leave an orphan
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            raise
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({self.proc.returncode}) during start-up: {self.log_tail()}")
            try:
                with ControlClient(self.control, timeout=1.0, **self.ctl_options) as ctl:
                    ctl.call("hello")
                return
            except tunerd.TunerdError:
                time.sleep(0.2)
        raise RuntimeError(f"the daemon did not come up within {timeout:g} s: {self.log_tail()}")

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def status(self, timeout: float = 10.0) -> dict:
        with ControlClient(self.control, timeout=timeout, **self.ctl_options) as ctl:
            return ctl.call("status")

    def call(self, cmd: str, **args) -> dict:
        with ControlClient(self.control, timeout=10.0, **self.ctl_options) as ctl:
            return ctl.call(cmd, **args)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def worker_pids(self) -> list[int]:
        return [p.pid for p in tree(self.pid)[1:] if is_stage_worker(p)]

    def footprint(self) -> Footprint:
        return footprint(self.pid)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> list[int]:
        """SIGKILL the daemon alone (its workers must notice and go); returns the workers' pids."""
        workers = [p.pid for p in tree(self.pid)[1:]]
        self.proc.kill()
        self.proc.wait(10)
        return workers

    def __enter__(self) -> "DaemonProcess":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def gone(pids: list[int], timeout: float = 10.0) -> bool:
    """Whether every pid has exited (or is a zombie) within timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = []
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
            except psutil.NoSuchProcess:
                pass
        if not left:
            return True
        time.sleep(0.1)
    return False


def wait_for(pred, timeout: float, what: str, *, poll: float = 0.2):
    """``pred()``'s first truthy value within ``timeout`` seconds; AssertionError naming ``what`` if none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out waiting for {what}")


def log(msg: str) -> None:
    """Progress for the tools: stderr, so stdout stays the report."""
    print(msg, file=sys.stderr, flush=True)


def print_report(report: dict, as_json: bool, *, text_skips: tuple[str, ...] = ()) -> int:
    """A tool's report on stdout (JSON, or one ``key: value`` line each but ``text_skips``); exit
    status 0 when it is ok."""
    import json
    if as_json:
        print(json.dumps(report, indent=1))
    else:
        for key, value in report.items():
            if key not in text_skips:
                print(f"{key}: {value}")
    return 0 if report["ok"] else 1


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    xs = sorted(values)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


# --------------------------------------------------------------------------- crashes while writing state
_STATE_WRITER = """
import sys
from tunerd.daemon.state import StateStore
store = StateStore(sys.argv[1])
pad = "x" * int(sys.argv[2])
i = 0
while True:
    i += 1
    store.save_tuned("model", "platform", "freq", config=f"config-{i}", fps=float(i), extra={"pad": pad, "n": i})
    if i == 1:
        print("written", flush=True)
"""


def crash_state_writes(state_dir: str | os.PathLike, trials: int, *, pad_bytes: int = 256 * 1024, seed: int = 0) -> dict:
    """``trials`` times: a process rewrites a tuned-state record in a loop (tunerd.daemon.state: temp file,
    fsync, rename) and gets SIGKILL at a random moment; the record read back must be whole, one
    that was written completely. Returns counts (``ok`` when every read was good)."""
    import random

    from tunerd.daemon.state import StateStore
    rng = random.Random(seed)
    store = StateStore(state_dir)
    good = bad = 0
    last_n = 0
    problems = []
    for _ in range(trials):
        proc = subprocess.Popen([sys.executable, "-c", _STATE_WRITER, str(state_dir), str(pad_bytes)],
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "written"
        time.sleep(rng.uniform(0.0, 0.3))
        proc.kill()
        proc.wait()
        proc.stdout.close()
        data = store.load_tuned("model", "platform", "freq")
        if (data and data["config"] == f"config-{data['n']}" and data["fps"] == data["n"]
                and len(data["pad"]) == pad_bytes):
            good += 1
            last_n = data["n"]
        else:
            bad += 1
            problems.append(repr(data)[:200])
    temp_left = len(list((Path(state_dir) / "tuned").glob(".*.tmp")))
    return {"trials": trials, "good_reads": good, "bad_reads": bad, "last_writes_in_a_trial": last_n,
            "temp_files_left": temp_left, "problems": problems[:5], "ok": bad == 0}
