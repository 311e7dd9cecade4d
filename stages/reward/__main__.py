import sys

from stages.reward.stage import main

sys.exit(main())
