"""Entry point: build the UI and serve it (locally at http://127.0.0.1:7860, or as a Space).

Training runs in child processes managed by vit.jobs; stopping the app (Ctrl-C,
SIGTERM) stops them cleanly and leaves their runs resumable.
"""
import signal

from vit.jobs import JobManager
from vit.ui import build_app, launch_options


def main() -> None:
    manager = JobManager()  # runs under VIT_CHECKPOINTS, a Space's /data, or checkpoints/
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # docker/Spaces stop: the same path as Ctrl-C
    try:
        build_app(manager).launch(**launch_options())
    except KeyboardInterrupt:
        pass
    finally:
        manager.shutdown()


if __name__ == "__main__":
    main()
