"""Task functions by name, for callers that cannot send code (the HTTP API, the CLI).

Whatever arrives over HTTP is JSON: a function *name* and JSON arguments. The name is looked up
here, so a remote caller can only run functions that the program registered on purpose, and
nothing it sends is ever unpickled.

    registry = mppool.Registry.with_builtins()      # primes, sha256, fib

    @registry.register("square")
    def square(x: int) -> int:
        return x * x

    mppool.register("cube", lambda x: x**3)        # the default registry used by pool.serve()

Functions are shipped to the workers like any other task function, so module-level functions
travel by reference and lambdas or closures by value.
"""

from __future__ import annotations

import hashlib
import inspect
import math
import re
import threading
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

__all__ = ["Registry", "default_registry", "fib", "primes", "register", "sha256"]

F = TypeVar("F", bound=Callable[..., Any])

# A name is used in URLs, JSON and metric labels: keep it to a boring, unambiguous alphabet.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")

# Upper bounds on the built-ins' arguments. A remote caller can already ask for long work, but
# not for work whose *result* is unreasonable: fib(10**6) is a 200,000-digit number, more than
# JSON consumers (and Python's own int-to-str limit of 4,300 digits) accept.
PRIMES_MAX_N = 100_000_000
SHA256_MAX_ROUNDS = 100_000_000
FIB_MAX_N = 10_000

# Annotations that are checked against JSON arguments before a task is submitted, so a wrong
# type is the caller's 400 error rather than a task failing later in a worker.
_CHECKED_TYPES: tuple[type, ...] = (int, float, str, bool, list, dict)


def _check_int(name: str, value: object, low: int, high: int) -> int:
    # bool is an int subclass, but primes(True) is a caller's mistake, not a request for 1.
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")
    return value


def primes(n: int) -> int:
    """Count the primes below ``n`` by trial division (deliberately CPU-bound, pure Python).

    Args:
        n: the exclusive upper limit, ``0 <= n <= PRIMES_MAX_N``.

    Returns:
        How many primes ``p < n`` there are (``primes(5000) == 669``).

    Raises:
        TypeError: if ``n`` is not an int.
        ValueError: if ``n`` is out of range.
    """
    n = _check_int("n", n, 0, PRIMES_MAX_N)
    if n <= 2:
        return 0
    # Divide only by the odd primes found so far, up to the square root of the candidate.
    found: list[int] = []
    count = 1  # the prime 2
    for candidate in range(3, n, 2):
        limit = math.isqrt(candidate)
        for p in found:
            if p > limit:
                found.append(candidate)
                count += 1
                break
            if candidate % p == 0:
                break
        else:
            found.append(candidate)
            count += 1
    return count


def sha256(n: int, seed: str = "") -> str:
    """Hash ``seed`` with SHA-256, then hash the digest again, ``n`` rounds in all.

    Args:
        n: further rounds after hashing the seed, ``0 <= n <= SHA256_MAX_ROUNDS`` (with 0,
            the result is the SHA-256 of ``seed`` itself).
        seed: the text to start from (UTF-8 encoded).

    Returns:
        The hex digest after the last round.

    Raises:
        TypeError: if ``n`` is not an int or ``seed`` not a str.
        ValueError: if ``n`` is out of range.
    """
    n = _check_int("n", n, 0, SHA256_MAX_ROUNDS)
    if not isinstance(seed, str):
        raise TypeError(f"seed must be a str, not {type(seed).__name__}")
    digest = hashlib.sha256(seed.encode()).digest()
    for _ in range(n):
        digest = hashlib.sha256(digest).digest()
    return digest.hex()


def fib(n: int) -> int:
    """The ``n``-th Fibonacci number (``fib(0) == 0``, ``fib(1) == 1``), computed iteratively.

    Args:
        n: the index, ``0 <= n <= FIB_MAX_N``.

    Raises:
        TypeError: if ``n`` is not an int.
        ValueError: if ``n`` is out of range.
    """
    n = _check_int("n", n, 0, FIB_MAX_N)
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


def _validate_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid task name {name!r}: use 1-64 characters from letters, digits, '_', '.' "
            "and '-', starting with a letter or '_'"
        )
    return name


class Registry:
    """A thread-safe mapping from names to task functions.

    Args:
        functions: initial entries (names are validated).
    """

    def __init__(self, functions: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self._lock = threading.Lock()
        self._functions: dict[str, Callable[..., Any]] = {}
        for name, fn in (functions or {}).items():
            self.register(name, fn)

    @classmethod
    def with_builtins(cls) -> Registry:
        """A new registry holding the built-ins ``primes``, ``sha256`` and ``fib``."""
        return cls({"primes": primes, "sha256": sha256, "fib": fib})

    @overload
    def register(self, name: str, fn: F, *, replace: bool = ...) -> F: ...

    @overload
    def register(self, name: str, fn: None = ..., *, replace: bool = ...) -> Callable[[F], F]: ...

    def register(
        self, name: str, fn: Callable[..., Any] | None = None, *, replace: bool = False
    ) -> Any:
        """Register ``fn`` under ``name``; without ``fn``, return a decorator that does.

        Args:
            name: 1-64 characters from letters, digits, ``_``, ``.`` and ``-``.
            fn: the task function.
            replace: allow replacing an existing entry (otherwise that is an error, because
                silently re-pointing a name that remote callers use is rarely intended).

        Returns:
            ``fn`` (or the decorator).

        Raises:
            ValueError: for an invalid name, or a taken one without ``replace``.
            TypeError: if ``fn`` is not callable.
        """
        _validate_name(name)
        if fn is None:

            def decorator(f: F) -> F:
                self.register(name, f, replace=replace)
                return f

            return decorator
        if not callable(fn):
            raise TypeError(f"task function {name!r} is not callable: {fn!r}")
        with self._lock:
            if name in self._functions and not replace:
                raise ValueError(f"a task function named {name!r} is already registered")
            self._functions[name] = fn
        return fn

    def unregister(self, name: str) -> None:
        """Remove ``name``.

        Raises:
            KeyError: if it is not registered.
        """
        with self._lock:
            del self._functions[name]

    def get(self, name: str) -> Callable[..., Any]:
        """The function registered as ``name``.

        Raises:
            KeyError: if there is none.
        """
        with self._lock:
            return self._functions[name]

    def names(self) -> list[str]:
        """The registered names, sorted."""
        with self._lock:
            return sorted(self._functions)

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._functions

    def __len__(self) -> int:
        with self._lock:
            return len(self._functions)

    def bind(
        self, name: str, args: list[Any] | tuple[Any, ...], kwargs: Mapping[str, Any]
    ) -> Callable[..., Any]:
        """Look up ``name`` and check that it accepts ``args`` and ``kwargs``.

        The check binds the arguments to the function's signature and compares each one that
        is annotated with a plain JSON type (int, float, str, bool, list, dict). It does not
        run the function.

        Returns:
            The function.

        Raises:
            KeyError: if ``name`` is not registered.
            TypeError: if the arguments do not fit the signature or its simple annotations.
        """
        fn = self.get(name)
        try:
            signature = inspect.signature(fn)
        except (TypeError, ValueError):
            return fn  # a builtin without a signature: let the call itself decide
        bound = signature.bind(*args, **kwargs)  # raises TypeError on a mismatch
        try:
            hints = typing.get_type_hints(fn)
        except Exception:
            hints = {}  # unresolvable annotations are documentation, not a contract
        for param, value in bound.arguments.items():
            expected = hints.get(param)
            if expected not in _CHECKED_TYPES:
                continue
            kind = signature.parameters[param].kind
            if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                continue
            if not _fits(value, expected):
                raise TypeError(
                    f"argument {param!r} of {name!r} must be {expected.__name__}, "
                    f"not {type(value).__name__}"
                )
        return fn


def _fits(value: object, expected: Any) -> bool:
    if expected is float:  # JSON has one number type: an int is a fine float
        return isinstance(value, int | float) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, expected)


default_registry = Registry.with_builtins()
"""The registry that servers use unless given another one."""


@overload
def register(name: str, fn: F, *, replace: bool = ...) -> F: ...


@overload
def register(name: str, fn: None = ..., *, replace: bool = ...) -> Callable[[F], F]: ...


def register(name: str, fn: Callable[..., Any] | None = None, *, replace: bool = False) -> Any:
    """Register a task function in the default registry (see :meth:`Registry.register`)."""
    return default_registry.register(name, fn, replace=replace)
