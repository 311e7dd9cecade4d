import sys

from stages.eval.stage import main

sys.exit(main())
