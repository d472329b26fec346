"""Optional front ends, in the user process: the HTTP API and dashboard (``_http``, needs
the ``http`` extra), the Prometheus exporter (``_prometheus``), the registry of functions
that may run by name (``_registry``) and the ``mppool`` command (``_cli``)."""
