"""kombu's filesystem transport (the embedded broker) without its torn-message race.

kombu writes a message by creating `<ts>_<uuid>.<queue>.msg`, then locking and writing it; a
reader that lists the folder in between moves away an empty file, fails to parse it, and
the JSONDecodeError stops the whole Celery worker ("Unrecoverable error"). With a gateway
writing while a worker polls every 20 ms this happens within minutes.

This transport (selected through `broker_transport` when the URL is `filesystem://`):
- writes atomically: the payload goes to a `.tmp` name that no reader matches, then an
  os.replace puts it in place, so what workers and beat send is never seen half-written;
- reads defensively, for writers still using plain kombu: an empty file is left
  for the next poll, the reader takes a shared lock (the writer holds an exclusive one while
  writing) before reading, and a file that still does not parse is logged and dropped, never
  fatal. Dropping is safe because messages are only wake-ups: the sweep re-sends the job.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import tempfile
import uuid
from queue import Empty
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import bytes_to_str, str_to_bytes
from kombu.utils.json import dumps, loads

log = logging.getLogger(__name__)


class Channel(filesystem.Channel):
    # kombu's own bases disagree on this signature (`message` vs `payload`); follow its caller.
    def _put(self, queue: Any, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + ".tmp"
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(message)))
            os.replace(partial, final)
        except OSError as exc:
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        wanted = f"{queue}.msg"
        processed = self.processed_folder if self.store_processed else tempfile.gettempdir()
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != wanted:
                continue
            source = os.path.join(self.data_folder_in, name)
            try:
                if os.path.getsize(source) == 0:
                    continue  # created, not written yet: the next poll takes it
                moved = shutil.move(source, processed)
            except OSError:
                continue  # another consumer took it first
            payload = self._read(moved)
            if payload is None:
                continue
            return payload
        raise Empty()

    def _read(self, path: str) -> Any:
        try:
            with open(path, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_SH)  # waits while a writer holds LOCK_EX
                data = f.read()
            if not self.store_processed:
                os.remove(path)
        except OSError as exc:
            raise ChannelError(f"Cannot read file {path!r} from queue.") from exc
        try:
            return loads(bytes_to_str(data))
        except ValueError:
            log.warning("dropped an unreadable message file %s (%d bytes)", path, len(data))
            return None


class Transport(filesystem.Transport):
    Channel = Channel
