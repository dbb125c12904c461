"""iceserv: a Python implementation of the icecream distributed compile cluster.

This file stays empty on purpose: it runs before every ``iceserv.client``
import, and the compiler wrapper must start fast.
"""
