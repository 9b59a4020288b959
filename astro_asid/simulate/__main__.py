import sys

from astro_asid.simulate.cli import main

sys.exit(main())
