import sys

from amct_targets.cli import main

sys.exit(main())
