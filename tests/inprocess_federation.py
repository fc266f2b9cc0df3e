"""A real federation inside the test process: the server exactly as `python -m server` runs it (server/app.py's
run(), on an asyncio loop in a thread of its own) and each client exactly as `python -m client` runs it
(client/app.py's ClientApp, in a thread of its own), over real gRPC on 127.0.0.1, with real tensors and files.
No process starts (each would cost seconds of importing torch), so a federation takes about as long as its training.

`InProcessFederation` has the interface of tests/harness.py's `Federation` (start_server, start_client, wait,
wait_for, log, rounds, model, close), so a test reads the same either way; `process=True` starts one actor as a
real process instead (a victim for kill -9 among in-process peers, say). What only a process can show stays in
processes: kill -9 (no cleanup runs), real signals, the CLI's own stderr, another network namespace.

Process-wide state, and how it is kept apart:
- logging: every record goes to the log file of the actor whose thread made it; records of other threads (the
  server's event loop and executors) go to the server's. Each file has the format the actor's flags ask for.
- torch runs one intra-op thread while a federation is up, as the processes do (OMP_NUM_THREADS=1): the same
  arithmetic, so in-process and process runs of one configuration end with the same model.
- fault points (common/faults.py; FEDTL_FAULT is one per process) are set per client thread: `fault="train:1:stop"`
  holds the thread at the point until `resume()` (a frozen machine, as SIGSTOP/SIGCONT), `fault="train:1"` unwinds
  the thread there: its connection closes, as when a client vanishes mid-round. Unlike kill -9, `finally` blocks
  run, so tests about what a killed client leaves behind use a process. Points reached in the client's own thread
  work (train, download, the secagg phases); "upload" runs in a gRPC thread: use a process for it.
- signals: server/app.py's serve() installs SIGTERM/SIGINT handlers on its loop, which only the main thread can;
  the server's loop records them instead, and `signal()` calls what the handler would (a graceful stop).
"""

from __future__ import annotations

import abc
import asyncio
import collections
import ctypes
import json
import logging
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from harness import Federation, Proc

from fedtl.common import faults
from fedtl.common.cli import run_reporting
from fedtl.common.errors import FedError, Terminated
from fedtl.common.logs import JsonFormatter
from fedtl.server.clock import Clock, ManualClock
from fedtl.server.config import ServerConfig

VANISHED = -int(signal.SIGKILL)  # the exit code of a client thread that unwound at its fault point (a killed process's)
STOPPED = 130  # a client thread told to leave, as client/__main__.py exits on SIGTERM
NOISY = ("PIL", "urllib3", "asyncio", "timm")  # as common/logs.configure_logging quiets them


class _Vanish(BaseException):
    """Unwinds a client thread at its fault point (not an Exception: nothing in the client may catch it)."""


class _Leave(Terminated):
    """Raised into a client thread from outside: the in-process SIGTERM, as client/__main__.py raises Terminated (and how
    close() ends leftovers)."""


class ActorLog:
    """One actor's log file, written line by line as a process's stderr would be."""

    def __init__(self, path: Path, prefix: str) -> None:
        self.path = path
        self._file = path.open("w", encoding="utf-8")
        self._lock = threading.Lock()
        self.changed = threading.Condition()  # notified on every line written, and when the actor's thread ends
        self.configure("INFO", prefix, "text")

    def configure(self, level: str, prefix: str, fmt: str) -> None:
        self.level = getattr(logging, level.upper(), logging.INFO)
        root = logging.getLogger()
        if self.level < root.level:  # --log-level DEBUG: let those records be made (INFO otherwise: no gRPC debug chatter)
            root.setLevel(self.level)
        if fmt == "json":
            self.formatter: logging.Formatter = JsonFormatter(prefix.strip())
        else:
            self.formatter = logging.Formatter(f"%(asctime)s.%(msecs)03d %(levelname)-7s {prefix}%(name)s: %(message)s", "%H:%M:%S")

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < self.level:
            return
        self.write(self.formatter.format(record))

    def write(self, line: str) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.write(line + "\n")
                self._file.flush()
        self.notify()

    def notify(self) -> None:
        with self.changed:
            self.changed.notify_all()

    def wait_until(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Until `ready()` holds, re-checked on every line written and when the actor ends; False at the timeout."""
        with self.changed:
            return self.changed.wait_for(ready, timeout)

    @property
    def text(self) -> str:
        return self.path.read_text(encoding="utf-8")

    def close(self) -> None:
        with self._lock:
            self._file.close()


class _Router(logging.Handler):
    """The one root handler while any in-process actor runs: a record goes to its thread's actor, else to the newest server."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.threads: dict[int, ActorLog] = {}
        self.servers: list[ActorLog] = []

    def emit(self, record: logging.LogRecord) -> None:
        log = self.threads.get(record.thread or 0) or (self.servers[-1] if self.servers else None)
        if log is not None:
            try:
                log.emit(record)
            except Exception:  # noqa: BLE001 - as logging.Handler.handleError: a bad record never breaks the run
                self.handleError(record)


class _ServerLoopPolicy(asyncio.DefaultEventLoopPolicy):
    """New loops of in-process server threads record their signal handlers (server/app.py's serve() adds them)."""

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        server = _SERVER_THREADS.get(threading.get_ident())
        return _RecordingLoop(server) if server is not None else super().new_event_loop()


class _RecordingLoop(asyncio.SelectorEventLoop):
    def __init__(self, server: ServerThread) -> None:
        super().__init__()
        self._server = server
        server.loop = self

    def add_signal_handler(self, sig: int, callback: Callable[..., object], *args: object) -> None:
        self._server._handlers[sig] = (self, callback, args)
        if sig == signal.SIGTERM:
            self._server._handled.set()

    def remove_signal_handler(self, sig: int) -> bool:
        return self._server._handlers.pop(sig, None) is not None


class _FaultPlan:
    """common/faults.py's FEDTL_FAULT spec ("point[:n][:stop]"), for one client thread."""

    def __init__(self, spec: str) -> None:
        self.point, _, rest = spec.partition(":")
        nth, _, action = rest.partition(":")
        self.nth, self.stop = int(nth or 1), action == "stop"
        self.seen = collections.Counter[str]()
        self.held = threading.Event()  # the thread waits at the point (SIGSTOP's state T)
        self.released = threading.Event()

    def hit(self, point: str) -> None:
        if point != self.point:
            return
        self.seen[point] += 1
        if self.seen[point] != self.nth:
            return
        if not self.stop:
            raise _Vanish(f"fault point {point} #{self.nth}")
        self.held.set()
        self.released.wait()


_LOCK = threading.Lock()
_USERS = 0
_ROUTER = _Router()
_SERVER_THREADS: dict[int, ServerThread] = {}
_PLANS: dict[int, _FaultPlan] = {}
_SAVED: dict[str, object] = {}
_original_hit = faults.hit


def _hit(point: str) -> None:
    plan = _PLANS.get(threading.get_ident())
    if plan is not None:
        plan.hit(point)
    else:
        _original_hit(point)


def _acquire() -> None:
    """Set the process up for in-process actors (the first federation does; the last to close undoes it)."""
    global _USERS
    with _LOCK:
        _USERS += 1
        if _USERS > 1:
            return
        root = logging.getLogger()
        _SAVED.update(level=root.level, threads=torch.get_num_threads(), policy=asyncio.get_event_loop_policy(),
                      noisy={name: logging.getLogger(name).level for name in NOISY})
        root.addHandler(_ROUTER)
        root.setLevel(logging.INFO)
        for name in NOISY:
            logging.getLogger(name).setLevel(logging.WARNING)
        torch.set_num_threads(1)
        asyncio.set_event_loop_policy(_ServerLoopPolicy())
        faults.hit = _hit


def _release() -> None:
    global _USERS
    with _LOCK:
        _USERS -= 1
        if _USERS:
            return
        root = logging.getLogger()
        root.removeHandler(_ROUTER)
        root.setLevel(_SAVED["level"])  # type: ignore[arg-type]
        for name, level in _SAVED["noisy"].items():  # type: ignore[attr-defined]
            logging.getLogger(name).setLevel(level)
        torch.set_num_threads(_SAVED["threads"])  # type: ignore[arg-type]
        asyncio.set_event_loop_policy(_SAVED["policy"])  # type: ignore[arg-type]
        faults.hit = _original_hit


def thread_stacks() -> str:
    """Where every thread of this process is (for a timeout's message: what the federation was waiting on)."""
    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(f"--- thread {names.get(ident, ident)}:\n{''.join(traceback.format_stack(frame)[-12:])}"
                     for ident, frame in sys._current_frames().items())


def _raise_in(thread: threading.Thread, exc: type[BaseException]) -> None:
    """Raise `exc` in `thread` at its next Python instruction (gRPC waits wake every 0.1 s to let this through)."""
    if thread.ident is not None and thread.is_alive():
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(exc))


class _Actor(abc.ABC):
    """What tests ask of a server or client, in a thread: exit code, log, wait, wait_for."""

    name: str
    thread: threading.Thread
    code: int | None
    actor_log: ActorLog

    @property
    def log_path(self) -> Path:
        return self.actor_log.path

    @property
    def log(self) -> str:
        return self.actor_log.text

    def poll(self) -> int | None:
        return None if self.thread.is_alive() else self.code

    def wait(self, timeout: float) -> int:
        self.thread.join(timeout)
        if self.thread.is_alive():
            stacks = thread_stacks()
            self.close()
            raise AssertionError(f"{self.name} did not end within {timeout}s; log tail:\n{self.log[-4000:]}\n{stacks}")
        assert self.code is not None, f"{self.name} ended without an exit code:\n{self.log[-4000:]}"
        return self.code

    def logged(self, text: str, after: str = "") -> bool:
        """The log holds `text` (after the first `after`, when given)."""
        log = self.log
        start = log.find(after) if after else 0
        return start >= 0 and text in log[start:]

    def wait_for(self, text: str, timeout: float = 60.0, after: str = "") -> None:
        """Until the log holds `text` (after the first `after`, when given)."""
        self.actor_log.wait_until(lambda: self.logged(text, after) or not self.thread.is_alive(), timeout)
        if self.logged(text, after):
            return
        if not self.thread.is_alive():
            raise AssertionError(f"{self.name} ended ({self.code}) before logging {text!r}:\n{self.log[-4000:]}")
        raise AssertionError(f"{self.name} did not log {text!r} within {timeout}s:\n{self.log[-4000:]}\n{thread_stacks()}")

    def _parse(self, parse_args: Callable[..., Any]) -> Any:
        """The actor's flags as its __main__ parses them; None (with the exit code set) when they do not parse."""
        try:
            return parse_args(self.argv, env={})
        except FedError as exc:
            self.actor_log.write(f"error: {exc}")
            self.code = 2
        except SystemExit as exc:  # argparse said why on stderr
            self.code = int(exc.code or 0)
        return None

    @abc.abstractmethod
    def close(self) -> None: ...


class ServerThread(_Actor):
    """server/app.py's run(cfg) in a thread, as server/__main__.py calls it (a FedError: one line and exit 2).

    With a `clock` (server/clock.py's ManualClock), the coordinator's time moves only by `advance()`: a deadline
    passes when the test says so, never because the machine was slow."""

    def __init__(self, argv: list[str], log_path: Path, clock: Clock | None = None) -> None:
        self.name = log_path.stem
        self.argv = argv
        self.clock = clock
        self.loop: asyncio.AbstractEventLoop | None = None
        self.code = None
        self._handlers: dict[int, tuple[asyncio.AbstractEventLoop, Callable[..., object], tuple]] = {}
        self._handled = threading.Event()
        self.actor_log = ActorLog(log_path, "server ")
        self.thread = threading.Thread(target=self._main, name=f"fedtl-test-{self.name}", daemon=True)
        _ROUTER.servers.append(self.actor_log)
        self.thread.start()

    def _main(self) -> None:
        from fedtl.server.app import run
        from fedtl.server.config import parse_args

        me = threading.get_ident()
        _SERVER_THREADS[me] = self
        try:
            cfg = self._parse(parse_args)
            if cfg is None:
                return
            self.actor_log.configure(cfg.log_level, "server ", cfg.log_format)
            self.code = run_reporting(lambda: run(cfg) if self.clock is None else self._run_on_clock(cfg), "server")
        except BaseException as exc:  # noqa: BLE001 - a crash is this actor's exit status, not the test thread's
            self.actor_log.write(f"server thread died: {type(exc).__name__}: {exc}")
            self.code = 70
        finally:
            _SERVER_THREADS.pop(me, None)
            self._handled.set()
            self.actor_log.notify()

    def _run_on_clock(self, cfg: ServerConfig) -> int:
        """server/app.py's run(cfg), step for step, with this thread's clock in the coordinator (run() takes none)."""
        from fedtl.server.app import build, serve
        from fedtl.server.observe import Observers

        observers = Observers(cfg.observe, cfg.run_dir, cfg.output or cfg.run_dir / "final_model.safetensors", tls_cert=cfg.tls_cert,
                              tls_key=cfg.tls_key)
        try:
            coordinator = build(cfg, clock=self.clock, sinks=observers.sinks)
        except BaseException:
            observers.stop()
            raise
        return asyncio.run(serve(cfg, coordinator, observers))

    def advance(self, seconds: float) -> None:
        """Move the server's ManualClock on, on its loop (where its sleepers wake), and return once it has moved."""
        assert isinstance(self.clock, ManualClock) and self.loop is not None, "start_server(clock=ManualClock()) to move time"
        clock = self.clock

        async def move() -> None:
            clock.advance(seconds)

        asyncio.run_coroutine_threadsafe(move(), self.loop).result(30)

    def advance_until(self, text: str, step: float, after: str = "", timeout: float = 60.0) -> None:
        """Move the clock on by `step` until the log holds `text` (the event the passing time was for).

        Steps repeat: a wait the server enters just as time moves (its timer task not yet run, so its deadline is
        taken after the move) gets the next step instead of waiting forever."""
        deadline = time.monotonic() + timeout
        while not self.logged(text, after):
            if not self.thread.is_alive():
                if self.logged(text, after):
                    return
                raise AssertionError(f"{self.name} ended ({self.code}) before logging {text!r}:\n{self.log[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not log {text!r} within {timeout}s:\n{self.log[-4000:]}\n{thread_stacks()}")
            self.advance(step)
            self.actor_log.wait_until(lambda: self.logged(text, after), 0.05)  # the next step once the server has taken this one

    @property
    def serving(self) -> bool:
        """Listening, with its signal handlers in place (server.json is written just before they are added)."""
        return self._handled.is_set() and self.thread.is_alive()

    def signal(self, sig: int) -> None:
        """What the signal handler serve() installed does (SIGTERM, SIGINT: a graceful stop), called on the server's loop."""
        entry = self._handlers.get(sig)
        if entry is None:
            raise AssertionError(f"{self.name} has no handler for {signal.Signals(sig).name} (not serving?)")
        loop, callback, args = entry
        loop.call_soon_threadsafe(callback, *args)

    def kill(self) -> None:
        raise AssertionError("an in-process server cannot be killed with -9 (its cleanup would run): start_server(process=True)")

    def close(self) -> None:
        if self.thread.is_alive() and signal.SIGTERM in self._handlers:
            self.signal(signal.SIGTERM)
        self.thread.join(30)
        if self.actor_log in _ROUTER.servers:
            _ROUTER.servers.remove(self.actor_log)
        self.actor_log.close()


class ClientThread(_Actor):
    """client/app.py's ClientApp(cfg).run() in a thread, as client/__main__.py calls it."""

    def __init__(self, argv: list[str], log_path: Path, name: str, fault: str | None = None) -> None:
        self.name = name
        self.argv = argv
        self.code = None
        self.plan = _FaultPlan(fault) if fault else None
        self.actor_log = ActorLog(log_path, f"client[{name}] ")
        self.thread = threading.Thread(target=self._main, name=f"fedtl-test-client-{name}", daemon=True)
        self.thread.start()

    def _main(self) -> None:
        from fedtl.client.app import ClientApp
        from fedtl.client.config import parse_args

        me = threading.get_ident()
        _ROUTER.threads[me] = self.actor_log
        if self.plan is not None:
            _PLANS[me] = self.plan
        try:
            cfg = self._parse(parse_args)
            if cfg is None:
                return
            self.actor_log.configure(cfg.log_level, f"client[{cfg.name}] ", cfg.log_format)
            try:
                self.code = run_reporting(lambda: ClientApp(cfg).run(), "client")
            except _Leave:
                logging.getLogger("client").warning("stopped by signal; leaving the federation")
                self.code = STOPPED
        except _Vanish:
            self.code = VANISHED
        except BaseException as exc:  # noqa: BLE001
            self.actor_log.write(f"client thread died: {type(exc).__name__}: {exc}")
            self.code = 70
        finally:
            _PLANS.pop(me, None)
            _ROUTER.threads.pop(me, None)
            self.actor_log.notify()

    @property
    def held(self) -> bool:
        """Waiting at its `:stop` fault point (a process would be in state T)."""
        return self.plan is not None and self.plan.held.is_set() and not self.plan.released.is_set()

    def wait_held(self, timeout: float = 120) -> None:
        assert self.plan is not None, f"{self.name} has no fault point"
        if not self.plan.held.wait(timeout):
            raise AssertionError(f"client {self.name} never reached its fault point:\n{self.log[-2000:]}")

    def resume(self) -> None:
        """Let a held client go on (SIGCONT)."""
        if self.plan is not None:
            self.plan.released.set()

    def terminate(self) -> None:
        """Unwind the client as its SIGTERM handler does: its connections close, it exits with 130."""
        self.resume()
        _raise_in(self.thread, _Leave)

    def close(self) -> None:
        if self.thread.is_alive():
            self.terminate()
            self.thread.join(30)
        self.actor_log.close()


class InProcessFederation(Federation):
    """tests/harness.py's Federation, with the server and clients in threads of this process unless `process=True`."""

    def __init__(self, folder: Path, server_args: list[str]) -> None:
        super().__init__(folder, server_args)
        _acquire()
        self._closed = False
        self._server_threads: list[ServerThread] = []

    def restart_server(self, extra: list[str] | None = None, *, process: bool = False) -> ServerThread | Proc:  # type: ignore[override]
        return self.start_server(extra, address=f"127.0.0.1:{self.port}", process=process)

    def start_server(self, extra: list[str] | None = None, address: str = "127.0.0.1:0", *,  # type: ignore[override]
                     process: bool = False, clock: Clock | None = None, timeout: float = 120) -> ServerThread | Proc:
        if process:
            assert clock is None, "a server process keeps the system clock"
            return super().start_server(extra, address)
        info = self.run_dir / "server.json"
        info.unlink(missing_ok=True)
        self._starts += 1
        server = ServerThread(self.server_argv(address, extra), self.folder / f"server-{self._starts}.log", clock)
        self.server = server  # type: ignore[assignment]
        self._server_threads.append(server)
        server._handled.wait(timeout)  # set once it serves (its signal handlers in place), or when it ends
        if not server.serving:
            if not server.thread.is_alive():
                raise AssertionError(f"server exited ({server.code}):\n{server.log[-4000:]}")
            raise AssertionError(f"server did not start within {timeout}s:\n{server.log[-4000:]}")
        self.port = int(json.loads(info.read_text())["port"])
        return server

    def start_client(self, name: str, extra: list[str] | None = None, server: str | None = None,  # type: ignore[override]
                     env: dict[str, str] | None = None, *, process: bool = False, fault: str | None = None) -> ClientThread | Proc:
        if process:
            return super().start_client(name, extra, server, env)
        assert not env, "in-process clients share this process's environment: give `fault`, or process=True"
        argv = ["--server", server or f"127.0.0.1:{self.port}", "--name", name, "--workdir", str(self.folder / name),
                "--max-wait", "60", *(extra or [])]
        log = self.folder / f"{name}.log"
        if name in self.clients:
            self.clients[name].close()
            log = self.folder / f"{name}-{time.monotonic_ns()}.log"
        client = ClientThread(argv, log, name, fault)
        self.clients[name] = client  # type: ignore[assignment]
        return client

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            # Clients first (a client whose server stopped first would go on waiting to reconnect), then the server.
            # A run that ended has told its clients so: they are on their way out (as the server exits once they hung
            # up, a client may still be closing its channel); only what is left after that is told to leave.
            threads = [c for c in self.clients.values() if isinstance(c, ClientThread)]
            ended = all(not s.thread.is_alive() for s in self._server_threads)
            deadline = time.monotonic() + (5.0 if ended else 0.0)
            for client in threads:
                client.thread.join(max(0.0, deadline - time.monotonic()))
            for client in threads:
                if client.thread.is_alive():
                    client.terminate()
            super().close()
            for server in self._server_threads:  # earlier ones too (a restarted server's first self)
                server.close()
        finally:
            _release()
