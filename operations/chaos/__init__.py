"""A scripted chaos scenario against a running stack (`make run`): the service behind `manage.py chaos`.

While the simulator feeds the sources, it does to the stack what production will, one fault after the other, and
watches the pipeline react to each:

1. **kill-worker**: a backlog of rows lands in one source; once its sync task has committed some batches, the pool
   process running it gets SIGKILL (found through the workers' `inspect active` and checked against the stack's
   worker processes, psutil). The message is redelivered and the backlog must load in full.
2. **restart-redis**: the broker's Redis (the embedded one of `PISA_HOME`) is stopped and started again; rows
   inserted afterwards must reach the warehouse without anyone restarting a worker or beat. An external Redis
   cannot be restarted from here: the step says so and is skipped.
3. **source-outage**: a source database refuses connections (`ALLOW_CONNECTIONS false`, its sessions ended) for a
   while; the pipeline must notice, back off, and catch up once it is back.
4. **empty-source**: a source is truncated (the simulator goes on writing to it); its old rows must leave.
5. **bad-rows**: rows with each problem the source's style can hold; they must be quarantined, the duplicate
   CNTSTUIDs recorded.
6. **late-transaction**: rows committed seconds after newer ones; they must not be missed.
7. **update-delete**: rows changed in place and deleted, including the row that superseded an injected duplicate
   (its predecessor must become the student again).
8. **late-insert-delete**: one transaction, held open, inserts a row dated before the look-back window and deletes
   another: the row count does not move, yet the new row must load and the deleted one leave.
9. **delete-newest**: the source's newest row is deleted: it must leave the warehouse, and the country's published
   figures must never show it half-loaded meanwhile (the pipeline once forgot and reloaded such a country).

The bad rows include hostile values (a negative or absurd weight, plausible values of 1e9) that only the plausibility
rules refuse; the country's figures must not go stale. While Redis is down (restart-redis), the API must answer with
a JSON 503, never an HTML page.

Then it pauses the simulator, waits for the pipeline to settle, runs the same comparison as `manage.py verify` and
`metrics rebuild --verify`, resumes the simulator, and reports. The outcome is a failure on any loss, duplicate or
difference, or when the pipeline did not recover from a fault within its deadline.
"""

from operations.chaos.plan import FULL, QUICK, ChaosError, ChaosPlan, ChaosReport, StepFailed, poll_until, report_lines
from operations.chaos.run import ChaosRun, chaos_run
from operations.chaos.stack import Stack, stack_find

__all__ = ["FULL", "QUICK", "ChaosError", "ChaosPlan", "ChaosReport", "ChaosRun", "Stack", "StepFailed", "chaos_run",
           "poll_until", "report_lines", "stack_find"]
