"""The dispatcher process: one thread, one event loop, every scheduling decision.

Started as a fresh interpreter by the user process (``_loop.main``); it forks the workers.
The loop (``_loop``, ``_poller``, ``_inbox``, ``_workers``, ``_procs``) moves bytes and
processes; every decision is made by the pure scheduler (``_scheduler`` with ``_runqueue``,
``_pipes``, ``_claims``, ``_stealing``, ``_outcomes``, ``_cancelling``, ``_waiting``,
``_estimates``, ``_tasks``, and the token buckets of ``mppool._ratelimit``) on one injected
clock (``_clock``). It never imports the client, the web layer, or user code.
"""
