import sys

from deft_plugin.cli.main import main

sys.exit(main())
