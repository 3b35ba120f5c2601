"""`clstream-server`: run the service until SIGTERM or SIGINT, then shut down gracefully: exit 0 once
the final state is durable, 1 when the final checkpoint failed (the log says how many batches are
lost), 2 when it cannot start (bad settings, an unusable checkpoint directory).

    clstream-server --input-shape 1 8 8 --class-names 0 1 2 3 4 5 6 7 8 9 --strategy replay \
        --checkpoint-dir ckpt --port 50051 --metrics-port 9464

Every setting is a flag, a CLSTREAM_* environment variable or a key of the --config file
(`clstream-server --help` lists them). Once up it prints one line,
`clstream-server listening on HOST:PORT metrics HOST:PORT`, on stdout.
"""
from __future__ import annotations

import json
import logging
import signal
import sys
import threading

from pydantic import ValidationError

from cl_engine.config import validation_message

from .settings import load_settings


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        settings = load_settings(argv)
    except ValidationError as e:
        print(f"clstream-server: invalid settings: {validation_message(e)}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as e:
        print(f"clstream-server: invalid settings: {e}", file=sys.stderr)
        return 2
    if "--print-config" in argv:
        print(json.dumps(settings.public(), indent=2))
        return 0
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("clstream-server")

    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, _frame):  # also during start-up: the server then stops as soon as it is up
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    from .service import Service  # torch and gRPC load here, after the settings are known good

    try:
        service = Service(settings).start()
    except (ValueError, RuntimeError, OSError) as e:
        log.error("could not start: %s", e)
        return 2
    metrics = f" metrics {settings.metrics_host}:{service.metrics_port}" if settings.metrics_enabled else ""
    print(f"clstream-server listening on {settings.host}:{service.port}{metrics}", flush=True)
    while not stop.wait(0.5):
        pass
    log.info("%s: shutting down (grace %.0fs)", signal.Signals(received[0]).name, settings.shutdown_grace_seconds)
    final = service.stop()
    if not final["durable"]:
        log.error("stopped WITHOUT a durable final state: %s; %d batches applied since the last durable checkpoint "
                  "(%s) are lost", final["error"], final["batches_lost"], final["last_checkpoint"] or "none")
        return 1
    log.info("stopped cleanly%s", f"; final checkpoint {final['last_checkpoint']}" if final["checkpoints"] else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
