import sys

from leep_jax.cli.main import main

sys.exit(main())
