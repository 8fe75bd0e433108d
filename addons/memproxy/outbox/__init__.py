"""The outbox: the durable queue of turns on their way to the memory store.

A turn is scrubbed of secrets and written to a SQLite file (both by one worker thread) before anything else,
then sent by one background task. Transient backend failures, and refusals of every request (a rejected key,
exhausted credits, a wrong URL), pause the sender with jittered exponential backoff, honouring Retry-After up
to the longest pause, and keep every row; rejections of a row itself make it a dead letter. While the file
cannot be written (disk full), scrubbed turns wait in memory, up to a bound, and their write is retried.

- `queue`: `Outbox`, its life cycle, and the turns it scrubs, writes and hands to the sender;
- `sender`: the sending task, its backoff, and what each outcome does to a row;
- `held`: the turns held in memory while the file cannot be written;
- `table`: the file, its statements, and what the CLI does with it (`list_dead_letters`, `requeue`,
  `scrub_outbox`).
"""

from .queue import Outbox
from .table import list_dead_letters, requeue, scrub_outbox

__all__ = ["Outbox", "list_dead_letters", "requeue", "scrub_outbox"]
