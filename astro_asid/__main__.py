import sys

from astro_asid.cli import main

sys.exit(main())
