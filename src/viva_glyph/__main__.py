"""``python -m viva_glyph``: the ``viva-glyph`` command line."""

from viva_glyph.cli._main import main

raise SystemExit(main())
