import sys

from dockercomp.cli import main

sys.exit(main())
