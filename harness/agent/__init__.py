"""The on-device runner: load a compiled model, time it, run the eval sets, report raw facts as JSON.

This package crosses the wire. It imports only the standard library, numpy and the one runtime a job
names, never anything else from ``harness``, so that it runs on a device with Python 3.8+, numpy and a
runtime. It is shipped as a zipapp (see ``harness.build.agent_bundle``) and run as
``python3 agent.pyz run < job.json``.
"""

PROTOCOL_VERSION = 1
