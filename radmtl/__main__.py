import sys

from radmtl.cli import main

sys.exit(main())
