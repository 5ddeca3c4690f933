"""``dsmd serve`` whose searches wait, inside the worker thread, until a file goes (used by
test_serve_limits.py to have a request in flight when the stop signal comes).

    DSMD_TEST_HOLD=FILE python _held_serve.py serve ...

Each search first creates ``FILE.entered``, then waits while ``FILE`` exists. Nothing of this
exists in dsmd itself: it patches from outside.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from dsmd.cli import main
from dsmd.search.service import SearchService

HOLD = Path(os.environ["DSMD_TEST_HOLD"])
real_search = SearchService.search


def held_search(self: SearchService, text: str, k: int) -> dict:
    HOLD.with_name(HOLD.name + ".entered").write_text("")
    while HOLD.exists():
        time.sleep(0.01)
    return real_search(self, text, k)


SearchService.search = held_search  # type: ignore[method-assign]

if __name__ == "__main__":
    main()
