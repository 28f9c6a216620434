"""The PKCS#11 backend's threads and sessions (see :mod:`s3proxy.keys.pkcs11` for the whole story).

PKCS#11 calls block, so they run in a bounded ``ThreadPoolExecutor`` (``sessions`` threads); each
call borrows an idle session from a pool, one "anchor" session holds the login, everything is
opened lazily and rebuilt after ``fork()`` or when the token drops a session or the login
(retried once).  Also the PKCS#11 error classes and how they map to key-service errors (messages
name the error class only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pkcs11.exceptions as p11e
from pkcs11 import ObjectClass

from .base import KeyAccessDenied, KeyServiceError, KeyUnavailable
from .settings import Pkcs11Settings

T = TypeVar("T")

# Errors after which the session (or the login) is not usable any more.
SESSION_ERRORS = (
    p11e.SessionHandleInvalid,
    p11e.SessionClosed,
    p11e.UserNotLoggedIn,
    p11e.KeyHandleInvalid,
    p11e.ObjectHandleInvalid,
)
UNAVAILABLE_ERRORS = (
    *SESSION_ERRORS,
    p11e.NoSuchToken,
    p11e.TokenNotPresent,
    p11e.TokenNotRecognised,
    p11e.DeviceRemoved,
    p11e.DeviceError,
    p11e.DeviceMemory,
    p11e.SessionCount,
    p11e.HostMemory,
    p11e.FunctionFailed,
    p11e.SlotIDInvalid,
)
ACCESS_ERRORS = (
    p11e.PinIncorrect,
    p11e.PinInvalid,
    p11e.PinExpired,
    p11e.PinLocked,
    p11e.PinLenRange,
    p11e.UserPinNotInitialized,
    p11e.AnotherUserAlreadyLoggedIn,
)
# Errors of C_Decrypt / C_UnwrapKey that mean "this blob does not unwrap".
# SoftHSM2 reports a GCM tag mismatch and a bad KWP integrity check as
# CKR_GENERAL_ERROR.
BAD_BLOB_ERRORS = (
    p11e.EncryptedDataInvalid,
    p11e.EncryptedDataLenRange,
    p11e.WrappedKeyInvalid,
    p11e.WrappedKeyLenRange,
    p11e.DataInvalid,
    p11e.DataLenRange,
    p11e.GeneralError,
)
UNSUPPORTED_ERRORS = (
    p11e.MechanismInvalid,
    p11e.MechanismParamInvalid,
    p11e.ArgumentsBad,
    p11e.FunctionNotSupported,
)


def map_error(exc: p11e.PKCS11Error) -> KeyServiceError:
    """A PKCS#11 error outside wrap/unwrap as a KeyServiceError (messages name the error class only)."""
    name = type(exc).__name__
    if isinstance(exc, UNAVAILABLE_ERRORS):
        return KeyUnavailable(f"PKCS#11 token unavailable: {name}")
    if isinstance(exc, ACCESS_ERRORS):
        return KeyAccessDenied(f"PKCS#11 login refused: {name}")
    if isinstance(exc, UNSUPPORTED_ERRORS):
        return KeyServiceError(f"PKCS#11 mechanism or parameters not supported by the token: {name}")
    return KeyServiceError(f"PKCS#11 error: {name}")


@dataclass
class Session:
    handle: Any  # pkcs11.Session
    generation: int
    keys: dict[tuple[str, ObjectClass], Any] = field(default_factory=dict)


class SessionPool:
    """Threads, the session pool, the login and fork handling of one PKCS#11 token."""

    def __init__(self, settings: Pkcs11Settings, lib_loader: Callable[[str], Any]) -> None:
        self._settings = settings
        self._lib_loader = lib_loader
        self._pin = settings.pin.get_secret_value() if settings.pin is not None else None
        self._call_lock: AbstractContextManager[Any] = (
            nullcontext() if settings.module_thread_safe else threading.Lock()
        )
        self._state = threading.Lock()  # guards the fields below
        self._pid = os.getpid()
        self._executor: ThreadPoolExecutor | None = None
        self._lib: Any = None
        self._token: Any = None
        self._anchor: Any = None  # logged-in session that only holds the login
        self._idle: list[Session] = []
        self._generation = 0
        self._closed = False
        self.sessions_opened = 0  # for tests and metrics


    def _check_process(self) -> None:
        """After fork(): forget the parent's sessions and threads (never close them here)."""
        pid = os.getpid()
        if pid == self._pid:
            return
        with self._state:
            if pid == self._pid:
                return
            self._pid = pid
            self._executor = None
            self._idle = []
            self._anchor = None
            self._token = None
            self._generation += 1
            if self._lib is not None:
                with contextlib.suppress(p11e.PKCS11Error):
                    self._lib.reinitialize()  # C_Initialize again in the child
                self._lib = None

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._state:
            if self._closed:
                raise KeyUnavailable("the pkcs11 backend is closed")
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self._settings.sessions, thread_name_prefix="s3proxy-pkcs11"
                )
            return self._executor

    async def _run(self, fn: Callable[[Session], T]) -> T:
        self._check_process()
        executor = self._get_executor()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._in_thread, fn)

    def _in_thread(self, fn: Callable[[Session], T]) -> T:
        for attempt in range(2):
            with self._call_lock:
                try:
                    session = self._acquire()
                except KeyServiceError:
                    raise
                except p11e.PKCS11Error as exc:
                    raise map_error(exc) from None
                try:
                    result = fn(session)
                except SESSION_ERRORS as exc:
                    # The HSM dropped the session or the login (restart,
                    # failover): rebuild everything, log in again, retry once.
                    self._discard(session)
                    if attempt == 0:
                        continue
                    raise KeyUnavailable(f"PKCS#11 session lost: {type(exc).__name__}") from None
                except UNAVAILABLE_ERRORS as exc:
                    self._discard(session)
                    raise map_error(exc) from None
                except p11e.PKCS11Error as exc:
                    self._release(session)
                    raise map_error(exc) from None
                except BaseException:
                    self._release(session)
                    raise
                self._release(session)
                return result
        raise AssertionError("unreachable")  # pragma: no cover

    def _open_token(self) -> Any:
        s = self._settings
        if self._lib is None:
            try:
                self._lib = self._lib_loader(s.module)
            except p11e.PKCS11Error as exc:
                raise KeyUnavailable(f"cannot load PKCS#11 module {s.module!r}: {exc}") from None
        if self._token is None:
            try:
                self._token = self._lib.get_token(token_label=s.token_label)
            except p11e.NoSuchToken:
                raise KeyUnavailable(f"PKCS#11 token {s.token_label!r} not present") from None
            except p11e.MultipleTokensReturned:
                raise KeyServiceError(f"several PKCS#11 tokens labelled {s.token_label!r}") from None
        if self._anchor is None and self._pin is not None:
            try:
                self._anchor = self._token.open(user_pin=self._pin)
                self.sessions_opened += 1
            except p11e.UserAlreadyLoggedIn:
                self._anchor = None  # another user of the module logged in for us
        return self._token

    def _acquire(self) -> Session:
        with self._state:
            while self._idle:
                session = self._idle.pop()
                if session.generation == self._generation:
                    return session
                self._close_quietly(session.handle)
            token = self._open_token()
            handle = token.open()
            self.sessions_opened += 1
            session = Session(handle=handle, generation=self._generation)
            return session

    def _release(self, session: Session) -> None:
        with self._state:
            if session.generation == self._generation and not self._closed:
                self._idle.append(session)
            else:
                self._close_quietly(session.handle)

    def _discard(self, session: Session) -> None:
        """Drop ``session`` and start a new generation: every session and the login are rebuilt."""
        with self._state:
            self._close_quietly(session.handle)
            if session.generation != self._generation:
                return  # another thread already started over
            self._generation += 1  # idle sessions are closed as they are taken, busy ones when released
            if self._anchor is not None:
                self._close_quietly(self._anchor)
                self._anchor = None
            self._token = None  # look the token up again: a re-initialised HSM may move slots

    @staticmethod
    def _close_quietly(handle: Any) -> None:
        with contextlib.suppress(p11e.PKCS11Error):
            handle.close()

    async def _shutdown(self) -> None:
        """Close every session (the login last) and stop the threads; idempotent."""
        self._check_process()
        with self._state:
            if self._closed:
                return
            executor = self._executor
        if executor is not None:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sessions)
        with self._state:
            self._closed = True
            self._executor = None
        if executor is not None:
            executor.shutdown(wait=False)

    def _close_sessions(self) -> None:
        with self._call_lock, self._state:
            self._generation += 1
            for session in self._idle:
                self._close_quietly(session.handle)
            self._idle = []
            if self._anchor is not None:
                self._close_quietly(self._anchor)  # logs out: close it last
                self._anchor = None
            self._token = None
