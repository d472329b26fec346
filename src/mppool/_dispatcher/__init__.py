"""The dispatcher process: one thread, one event loop, every scheduling decision.

Started as a fresh interpreter by the user process (``_loop.main``); it forks the workers.
The loop (``_loop``) moves bytes and processes; every decision is made by the pure
scheduler (``_scheduler``, with ``_runqueue``, ``_pipes``, ``_claims``, ``_tasks``,
``_buckets``). It never imports the client, the web layer, or user code.
"""
