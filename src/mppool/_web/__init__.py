"""Optional front ends, in the user process: the HTTP API and dashboard (``_server``, ``_api``,
``_task_api``; aiohttp, from the ``http`` extra), the Prometheus exporter (``_prometheus``),
the functions that may run by name (``_registry``) and the ``mppool`` command (``_cli``)."""
