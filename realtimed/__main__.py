from __future__ import annotations

from realtimed.cli import main

raise SystemExit(main())
