"""``python -m keel.jobs``: a ``keel worker`` without the CLI (:func:`keel.jobs.worker.main`)."""

from keel.jobs.worker import main

raise SystemExit(main())
