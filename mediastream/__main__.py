"""``python -m mediastream``."""

from mediastream.cli import main

raise SystemExit(main())
