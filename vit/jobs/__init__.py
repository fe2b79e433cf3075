"""Background training: a queue of runs, each trained in its own child process.

    manager = JobManager()                       # finds and reconciles the runs under checkpoints/
    run_id = manager.submit(dataset, TrainConfig(epochs=5), owner=session_id)
    manager.progress(run_id)                     # status.json + metrics.jsonl: cheap to poll
    manager.cancel(run_id, owner=session_id)
    manager.shutdown()

The web server never trains. `submit` copies the dataset into the run
directory (so the run survives the upload's temporary files and can be
resumed), marks the run `queued` and returns its id at once. A scheduler
thread starts queued runs first come first served, one at a time per device,
as `python -m vit.jobs.worker RUN_DIR` in a new process group; the child writes its
progress into the run directory, which is all any reader needs, so a run
started from the CLI shows up too.

A child that dies (killed, crashed, out of memory) leaves its run
`interrupted` with the reason and its checkpoints intact; `resume` continues
from the last finished epoch. A new manager (an app restart) marks runs whose
process is gone `interrupted` and restarts the queue. `shutdown` stops the
children (cooperatively, then by force) and reaps their whole process group,
and a child whose app disappears without a shutdown stops by itself: no
orphans. On a CPU-only machine children run with fewer threads than cores and
a lower priority, so the web server stays responsive.

In multi-user mode (a public Space) a session may cancel, delete and resume
only the runs it submitted; single-user mode (the local default) has no owners.

- manager.py    JobManager: the requests, the one object the UI asks about runs
- scheduler.py  the queue and its thread: children started on free slots, reaped, stopped for time; reconciliation
- listing.py    owners, the runs a visitor sees and their summaries, expiry
- host.py       single-user or shared, training threads, one manager per folder, run names, a full disk
- child.py      one training process: started on a slot, stopped, and how it ended in words
- worker.py   the child's entry point (python -m vit.jobs.worker RUN_DIR)
- hf.py       the Hub's side of a job: GPUs and prices, the token checked, data up, job started, read, cancelled
- remote.py   runs on a Hugging Face GPU (Jobs): the follower that uploads, starts, follows and fetches; the estimate
- remote_worker.py  the job's entry point on Hugging Face (python -m vit.jobs.remote_worker)
- quota.py    runs queued or running per visitor on a shared app
- views.py    a run as the app lists it
- errors.py   JobError
"""
from vit.jobs.errors import JobError
from vit.jobs.host import default_cpu_threads, default_single_user
from vit.jobs.manager import JobManager
from vit.jobs.remote import Remote
from vit.jobs.worker import DATA_DIR, DISK_FULL, EXIT_DISK_FULL, JOB, LOG

__all__ = ["DATA_DIR", "DISK_FULL", "EXIT_DISK_FULL", "JOB", "JobError", "JobManager", "LOG", "Remote",
           "default_cpu_threads", "default_single_user"]
