import sys

from optcheck.upgrade.cli import main

sys.exit(main())
