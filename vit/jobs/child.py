"""A training process as the manager sees it: started on a slot (a GPU, or the CPU cores) in a process group of
its own, stopped, and, once it has exited, how it ended, in the words the user reads."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from vit import runs
from vit.runs import RunState
from vit.jobs.worker import DISK_FULL, EXIT_DISK_FULL, LOG, kept_note

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the child starts here: `-m vit.jobs.worker` finds the
                                                    # package even where it is not installed (a Space runs app.py)


@dataclass
class Child:
    run_id: str
    run_dir: Path
    proc: subprocess.Popen
    cancel_deadline: float | None = None  # set by a cancel: stopped by force after it
    forced: bool = False
    shutting_down: bool = False
    started: float = field(default_factory=time.monotonic)
    time_up: str | None = None  # why the manager stopped it (the time limit of a shared app), in words

    @classmethod
    def start(cls, run_dir: Path, slot: str, cpu_threads: int, niceness: int) -> "Child":
        """`python -m vit.jobs.worker RUN_DIR` on `slot` ("cpu" or "cuda:N"), its output appended to the run's log."""
        env = dict(os.environ, PYTHONUNBUFFERED="1", VIT_PARENT_PID=str(os.getpid()), VIT_NICE=str(niceness))
        if slot == "cpu":
            threads = str(cpu_threads)
            env.update(VIT_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, CUDA_VISIBLE_DEVICES="")
        else:
            env["CUDA_VISIBLE_DEVICES"] = slot.split(":")[1]
        runs.remove_partial_files(run_dir)
        runs.update_status(run_dir, RunState.RUNNING, message="Starting the training process", slot=slot, pid=None,
                           host=None, position=None)
        with open(run_dir / LOG, "ab") as log:
            log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting on {slot}\n".encode())
            log.flush()
            proc = subprocess.Popen([sys.executable, "-m", "vit.jobs.worker", str(run_dir)], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PACKAGE_ROOT,
                                    start_new_session=True)  # its own process group: killed as a whole
        return cls(run_dir.name, run_dir, proc)

    def ask_to_stop(self) -> None:
        """SIGTERM: the child stops at its next step and leaves its run resumable."""
        try:
            os.kill(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    def kill(self) -> None:
        """SIGKILL to its whole process group (data loader workers included)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def ending(self, rc: int, forced: bool) -> tuple[str | None, dict] | None:
        """The state and fields to record for the child that exited with `rc`, or None to leave its own."""
        status = runs.read_status(self.run_dir)
        state, epoch = status.get("state"), status.get("epoch") or 0
        if rc == EXIT_DISK_FULL:
            return RunState.FAILED, {"message": f"{DISK_FULL} {kept_note(self.run_dir)}", "exit_code": rc}
        if self.cancel_deadline is not None:  # a cancel was asked for
            return self._cancelled(state, rc, forced)
        if self.shutting_down:
            if state in runs.ACTIVE_STATES or state == RunState.CANCELLED:
                return RunState.INTERRUPTED, {"message": f"The app shut down during epoch {epoch + 1}. "
                                                  f"{kept_note(self.run_dir)} Resume to continue."}
            return None
        if state not in runs.ACTIVE_STATES:
            return None
        kept = kept_note(self.run_dir)
        if rc < 0:  # died without a word: killed, crashed, out of memory
            name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else f"signal {-rc}"
            why = {"SIGKILL": " (out of memory, or killed by a user or the system)",
                   "SIGSEGV": " (a crash in native code)"}.get(name, "")
            return RunState.INTERRUPTED, {"exit_code": rc, "message": f"The training process was killed by {name}{why} "
                                                               f"during epoch {epoch + 1}. {kept} Resume to continue."}
        last = tail(self.run_dir / LOG, 1).strip() or "no output"
        if "No space left on device" in tail(self.run_dir / LOG, 40):
            return RunState.FAILED, {"exit_code": rc, "message": f"{DISK_FULL} {kept}"}
        return RunState.FAILED, {"exit_code": rc,
                                 "message": f"The training process exited with code {rc}: {last[-300:]}"}

    def _cancelled(self, state: str | None, rc: int, forced: bool) -> tuple[str | None, dict] | None:
        kept = kept_note(self.run_dir)
        if self.time_up and (forced or state in (*runs.ACTIVE_STATES, RunState.CANCELLED)):
            return RunState.CANCELLED, {"cancel": "time limit", "message": f"{self.time_up} {kept} Resume to continue."}
        if forced:
            return RunState.CANCELLED, {"cancel": "forced", "message": "Stopped by force: the run did not stop by "
                                                                       "itself within the grace period after the "
                                                                       f"cancel. {kept}"}
        if state in runs.ACTIVE_STATES and rc in (runs.Exit.OK, runs.Exit.CANCELLED):
            return RunState.CANCELLED, {"cancel": "cooperative", "message": f"Cancelled. {kept}"}
        if state == RunState.CANCELLED:  # (a run that finished before it saw the cancel stays as it ended)
            return None, {"cancel": "cooperative"}
        return None


def tail(path: Path, lines: int) -> str:
    """The last lines of a log (of its last 16 KB), or "" when it cannot be read."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
    except OSError:
        return ""
