"""Entry point: build the UI and serve it (locally at http://127.0.0.1:7860, or as a Space).

Training runs in child processes managed by vit.jobs; stopping the app (Ctrl-C,
SIGTERM) stops them cleanly and leaves their runs resumable.
"""
import importlib
import signal
import threading

from vit.jobs import JobManager
from vit.ui import build_app, launch_options
from vit.ui.app import hold_events_until


def warm_up() -> None:
    """Import torch, timm and the model code, which the page starts without (bench/app_bench.py)."""
    for name in ("vit.predict", "vit.train.engine"):
        importlib.import_module(name)


def main() -> None:
    manager = JobManager()  # runs under VIT_CHECKPOINTS, a Space's /data, or checkpoints/
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # docker/Spaces stop: the same path as Ctrl-C
    app = build_app(manager)
    warm = threading.Event()
    hold_events_until(app, warm)  # (an event importing torch beside the warm-up could deadlock the imports)
    try:
        app.launch(prevent_thread_lock=True, **launch_options())
        warm_up()  # while the first visitor reads the page: their first plan and model need not wait for it
        warm.set()
        app.block_thread()  # until Ctrl-C or SIGTERM
    except KeyboardInterrupt:
        pass
    finally:
        app.close()
        manager.shutdown()


if __name__ == "__main__":
    main()
