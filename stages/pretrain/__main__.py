import sys

from stages.pretrain.stage import main

sys.exit(main())
