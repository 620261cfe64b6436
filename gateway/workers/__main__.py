"""``python -m gateway.workers``: one worker process, started by the master."""

import sys

from gateway.workers.worker import worker_main

sys.exit(worker_main())
