import sys

from stages.ppo.stage import main

sys.exit(main())
