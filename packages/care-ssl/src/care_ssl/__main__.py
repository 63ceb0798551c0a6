"""``python -m care_ssl`` (and ``torchrun -m care_ssl``) runs the ``care-ssl`` command."""

from care_ssl.cli import main

raise SystemExit(main())
