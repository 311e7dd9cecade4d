"""User-facing errors: one paragraph that says what is wrong and what to do, no traceback."""

from __future__ import annotations

import functools
import os
import sys


class UserError(Exception):
    """Bad input from the user (config, data, missing artifact). Printed without a traceback."""


def main_guard(fn):
    """Wrap a stage's `main` so a UserError exits with code 2 and a short message.

    Set RLHF_DEBUG=1 to see the full traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if os.environ.get("RLHF_DEBUG"):
                raise
            print(f"\nerror: {e}", file=sys.stderr)
            sys.exit(2)
        except Exception as e:  # a full disk, raised from a write we did not wrap (torch, safetensors, HF)
            from pipeline.artifacts.atomic import disk_full_error, is_disk_full

            if not is_disk_full(e) or os.environ.get("RLHF_DEBUG"):
                raise
            print(f"\nerror: {disk_full_error(getattr(e, 'filename', None) or 'a file', e)}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("\ninterrupted: nothing was committed; re-run the same command to resume.", file=sys.stderr)
            sys.exit(130)

    return wrapper
