"""Third-party V2 servers (Seldon MLServer, KServe's ModelServer, NVIDIA Triton through PyTriton) serving a
plan's tails, for tests and benches.

Their pins collide with the project's (protobuf, grpcio, pydantic), so each runs from a virtual environment
of its own, made once by ``python -m splitinf.tools.interop.setup_envs`` and cached under
``~/.cache/splitinf-interop/`` keyed by the pinned versions. ``servers`` starts one on loopback ports with
the plan's ``server/`` repository; the small server-side programs (``mlserver_runtime``, ``kserve_server``,
``pytriton_server``, with ``ort_metadata``) run inside those environments and import nothing of splitinf.
"""
