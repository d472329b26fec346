"""What each process loads: the dispatcher and the workers start without the user process's
machinery (the import contracts in pyproject.toml check the code; this checks a real boot)."""

from __future__ import annotations

import json

import mppool

from .conftest import run_python

USER_SIDE = ["mppool._client", "mppool._web", "aiohttp", "prometheus_client", "tqdm", "croniter"]


def test_the_dispatcher_boots_without_the_user_side() -> None:
    code = (
        "import json, sys\n"
        "from mppool._dispatcher._loop import main\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert "mppool._dispatcher._loop" in loaded
    assert [m for m in loaded if any(m == u or m.startswith(u + ".") for u in USER_SIDE)] == []


def test_importing_mppool_loads_nothing_until_a_name_is_used() -> None:
    code = (
        "import json, sys, mppool\n"
        "before = sorted(m for m in sys.modules if m.startswith('mppool'))\n"
        "mppool.RetryPolicy\n"
        "after = sorted(m for m in sys.modules if m.startswith('mppool'))\n"
        "print(json.dumps([before, after]))\n"
    )
    done = run_python("-c", code)
    assert done.returncode == 0, done.stderr
    before, after = json.loads(done.stdout)
    assert before == ["mppool"]
    assert "mppool._retry" in after and "mppool._client" not in after


def test_every_public_name_resolves() -> None:
    for name in mppool.__all__:
        assert getattr(mppool, name) is not None, name
    assert sorted(mppool.__all__) == sorted(set(mppool.__all__))
