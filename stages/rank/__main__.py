import sys

from stages.rank.stage import main

sys.exit(main())
