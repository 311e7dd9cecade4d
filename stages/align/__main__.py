import sys

from stages.align.stage import main

sys.exit(main())
