"""Development tools, apart from the service and never installed with it: the Polar stand-in
(`tools/standin`), the launcher of `make run` (`tools/stack.py`), the demo (`tools/demo.py`) and
the benchmarks (`tools/bench`). They run from a checkout's root: `python -m tools.stack`."""
