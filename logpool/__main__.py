import sys

from logpool.cli import main

sys.exit(main())
