"""`python -m coldstart` (what `accelerate launch -m coldstart` runs)."""

import atexit
import os
import sys

from .cli import main

code = main()
if int(os.environ.get("WORLD_SIZE", "1")) > 1:
    # One of several launched processes: its work is done and its process group torn down, but the interpreter's
    # own teardown still aborts now and then (a C++ thread destroyed while joinable: "terminate called without an
    # active exception", exit -6), which the launcher reports as a failed run. Run the exit handlers (metric
    # sinks flush there), flush, and leave without that teardown.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
sys.exit(code)
