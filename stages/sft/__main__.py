import sys

from stages.sft.stage import main

sys.exit(main())
