import sys

from busseg.cli.main import main

sys.exit(main())
