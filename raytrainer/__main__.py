"""``python -m raytrainer``: the ``raytrainer`` command."""

from raytrainer.cli import main

raise SystemExit(main())
