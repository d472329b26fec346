"""The user process: the pool your code talks to.

``Pool`` and its option views (``_pool``, ``_options``), the pool's state and submits
(``_core``), outcomes and the pool's end (``_delivery``), the dispatcher process with its
pipes and threads (``_connection``), futures (``_future``), lazy bounded ``map`` (``_map``,
``_map_feed``, ``_map_units``, ``_planner``), what a submit must get past (``_admission``),
ids of functions and options (``_interned``), serialisation (``_serial``), requests
(``_requests``), open maps at shutdown (``_open_maps``), schedules (``_schedule``), worker
setup for numeric work (``_setup``) and the job store (``_store``, ``_stored``). Nothing
here runs in the dispatcher or the workers.
"""
