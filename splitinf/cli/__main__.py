import sys

from splitinf.cli import main

sys.exit(main())
