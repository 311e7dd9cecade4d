import sys

from stages.compare.stage import main

sys.exit(main())
