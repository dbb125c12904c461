"""The compiler wrapper ``icecc`` (and ``icerun``, ``icecc-create-env``): what a build runs.

Modules: ``main`` (entry point, invocation modes, the overall flow), ``env``
(every ``ICECC_*`` variable, read once), ``log`` (``ICECC_DEBUG`` output);
pure: ``job`` (the job and what derives from it), ``args``, ``rules`` and
``options`` (1.4's argument analysis), ``respfile`` (``@file``), ``native``
(``-march=native``), ``environments`` (``ICECC_VERSION``); I/O: ``local``
(compiler lookup, recursion guard, lock files, running programs),
``sockets`` (reaching the local daemon), ``channel`` and ``remote`` (the
blocking protocol conversations); and ``createenv``/``envfiles`` (the
separate ``icecc-create-env`` program).

The wrapper runs once per compiler call, so it imports only the standard
library, :mod:`iceserv.protocol` and :mod:`iceserv.errors`, and the protocol
only once a daemon answered.  This file imports nothing.
"""

__all__: list[str] = []
