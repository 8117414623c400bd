"""The example's migration (opsbook's migrations hook runs it once per deploy, before cutover).

Expand-only: it adds what the new code needs and never drops what the old code still uses, so both releases
work during the cutover (see docs/runbooks/deploy.md, "expand/contract").
"""

from __future__ import annotations

import sys

from opsbook_example_app import __version__, db

STEPS = [
    "CREATE TABLE IF NOT EXISTS notes (id bigserial PRIMARY KEY, body text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now())",
]


def main() -> int:
    if not db.configured():
        print("migrate: DATABASE_URL is not set, nothing to migrate")
        return 0
    for sql in STEPS:
        db.query(sql)
    print(f"migrate: {len(STEPS)} step(s) applied for {__version__}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
