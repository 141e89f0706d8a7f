"""``python -m viva_glyph``: the ``viva-glyph`` command line."""

from viva_glyph.cli import main

raise SystemExit(main())
