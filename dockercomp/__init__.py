"""dockercomp: volunteer computing on Docker.

One package, built from the parts at the top of the repository: ``server/`` is imported as
``dockercomp.server`` (its stores as ``dockercomp.server.store.sqlite`` and ``.mongo``),
``client/`` as ``dockercomp.client``, ``protocol/`` as ``dockercomp.protocol``, and this
directory holds the CLI, the settings loader, the scientist's API client and the demo.
``dockercomp.resources`` finds workloads/, dashboard/, installer.sh and cleanup, whether
installed from the wheel or run from a checkout.
"""

__version__ = "0.1.0"
