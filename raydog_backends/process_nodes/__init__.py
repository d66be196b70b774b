"""Nodes as process sessions on this machine (Linux): what the ``local`` backend and the YellowDog
emulator share, and no plugin of its own.

- ``processes``: a task script in its own session, every process of the node, stopping them all
- ``addresses``: a loopback address per node, free ports, what listens where
- ``locks``: a folder lock shared by every process on the machine
- ``shims``: ``ray stop`` and ``shutdown`` scoped to one node (``node_commands`` does the work)
- ``runner``: Ray's command runner for such a node, with ``copying`` (rsync) and ``forwarding``
"""
