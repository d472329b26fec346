"""The user process: the pool your code talks to.

``Pool`` and its option views (``_pool``), the pipes and threads that carry work to the
dispatcher and results back (``_core``), lazy bounded ``map`` (``_map``, ``_planner``),
serialisation (``_serial``, ``_interned``) and recurring-task handles (``_schedule``).
Nothing here runs in the dispatcher or the workers.
"""
