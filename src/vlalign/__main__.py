import sys

from vlalign.cli import main

sys.exit(main())
