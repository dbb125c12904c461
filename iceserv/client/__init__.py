"""The compiler wrapper ``icecc`` (and ``icerun``, ``icecc-create-env``): what a build runs.

Modules: ``main`` (entry point, invocation modes, the overall flow), ``env``
(every ``ICECC_*`` variable, read once), ``log`` (``ICECC_DEBUG`` output),
``job`` and ``args`` (the pure argument analysis of icecream 1.4),
``environments`` (``ICECC_VERSION`` parsing), ``local`` (compiler lookup,
recursion guard, lock files, running programs), ``sockets`` (reaching the
local daemon), ``remote`` (the blocking protocol conversation) and
``createenv`` (the separate ``icecc-create-env`` program).

The wrapper runs once per compiler call, so it imports only the standard
library, :mod:`iceserv.protocol` and :mod:`iceserv.errors`, and the protocol
only once a daemon answered.  This file imports nothing.
"""

__all__: list[str] = []
